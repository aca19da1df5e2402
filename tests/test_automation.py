"""Teacher-change automation: an observed teacher and automation conditions, on a real Dagster
instance in a tmp home.

The conditions are evaluated with Dagster's own `evaluate_automation_conditions` tick by tick, and
what a tick requests is materialized with the run tags the automation sensor puts on its runs
(`_run_until_idle`: what the daemon would do, without a daemon). The fast test runs the real
`observed_teacher` and `teacher` (a fingerprint, no model loaded) over no-op stand-ins of the assets
downstream (same keys, partitions, dependencies and conditions); the end-to-end test runs the real
pipeline with a tiny teacher, changes the teacher's checkpoint, and reads the lineage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest
from automation_standins import DEMO, pipeline, standins

SMALL = {"max_problems": 3, "offset": 0, "batch_size": 3, "num_candidates": 2,
         "sampling": {"max_new_tokens": 64, "temperature": 0.3}}


def _run_config() -> dict:
    return {"ops": {
        "problems": {"config": {"max_problems": 6}},
        "cold_start_student": {"config": {"max_problems": 0}},  # the base student scores (fast)
        "gen_ssd_trajectories": {"config": {**SMALL, "chunk_tokens": 16, "suitability": "none"}},
        "standard_kd_trajectories": {"config": SMALL},
        "posthoc_trajectories": {"config": SMALL},
        **{f"distilled_students__{m}": {"config": {"train": {"epochs": 1}}} for m in ("gen_ssd", "standard_kd", "posthoc")},
        "evaluation_scores": {"config": {"max_new_tokens": 48}},
    }}


def _setup(tmp_path, monkeypatch, teacher, student):
    """(home, instance, the code location's definitions on this home and these models)."""
    from gen_ssd_dagster.instance import get_instance
    from gen_ssd_dagster.store import Home

    home = Home.resolve(tmp_path / "home").make()
    monkeypatch.setenv("GEN_SSD_HOME", str(home.root))  # restored after the test (run_pipeline sets it)
    return home, get_instance(home), pipeline(str(home.root), str(teacher), str(student))


def _observe(defs, instance) -> str | None:
    """What the schedule launches: one observation of the teacher; its data version."""
    from gen_ssd_dagster.defs.automation import OBSERVED_TEACHER, last_observed_version

    assert defs.resolve_job_def("observe_teacher").execute_in_process(instance=instance).success
    assert instance.fetch_observations(OBSERVED_TEACHER, limit=1).records
    return last_observed_version(instance)


def _materialize(defs, instance, keys, partition=None, tags=None, run_config=None):
    ops = {k.to_python_identifier() for k in keys}  # Dagster rejects config of ops outside the run
    config = {**(run_config or {}), "ops": {k: v for k, v in (run_config or {}).get("ops", {}).items() if k in ops}}
    result = dg.materialize(list(defs.assets), instance=instance, selection=list(keys), partition_key=partition,
                            resources=defs.resources, tags=tags, run_config=config, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_step_failure]
    return result


def _tick(defs, instance, cursor):
    """One evaluation of the conditions: {asset: requested partitions (None: unpartitioned)}, cursor."""
    from gen_ssd_dagster.defs.automation import CONDITIONS

    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    requested = {k.to_user_string(): result.get_requested_partitions(k) for k in CONDITIONS
                 if result.get_num_requested(k)}
    return requested, result.cursor


def _run_until_idle(defs, instance, cursor, run_config=None, max_ticks=8):
    """Tick, run what was requested (one run per partition key, the sensor's run tags), repeat until
    a tick requests nothing. Returns every tick's request and the last cursor."""
    from gen_ssd_dagster.defs.automation import TRIGGER_TAGS

    ticks = []
    for _ in range(max_ticks):
        requested, cursor = _tick(defs, instance, cursor)
        if not requested:
            return ticks, cursor
        ticks.append(requested)
        by_partition = defaultdict(list)
        for name, parts in requested.items():
            for part in parts:
                by_partition[part].append(dg.AssetKey.from_user_string(name))
        for part, keys in sorted(by_partition.items(), key=lambda kv: kv[0] or ""):
            _materialize(defs, instance, keys, part, TRIGGER_TAGS, run_config)
    raise AssertionError(f"still requesting after {max_ticks} ticks: {ticks[-3:]}")


def _touch_checkpoint(path):
    """A new checkpoint in place: same architecture, one weight changed (the fingerprint changes)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = path / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})
    assert torch.is_tensor(tensors[name])


def test_definitions_register_the_automation():
    from gen_ssd_dagster.definitions import defs
    from gen_ssd_dagster.defs import automation

    loaded = defs()
    schedule = loaded.get_schedule_def("teacher_check_schedule")
    assert schedule.cron_schedule == os.environ.get(automation.CRON_ENV, automation.DEFAULT_CRON)
    assert schedule.job_name == "observe_teacher"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensor = loaded.get_sensor_def("teacher_change_automation")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = loaded.resolve_asset_graph()
    assert automation.OBSERVED_TEACHER in graph.get(automation.TEACHER).parent_keys
    assert graph.get(automation.OBSERVED_TEACHER).is_observable
    for key in (*automation.CONDITIONS, dg.AssetKey("method_comparison"), dg.AssetKey("problems")):
        assert graph.get(key).automation_condition == automation.CONDITIONS.get(key), key


def test_the_pipeline_and_dagster_dev_load_one_definitions(tmp_path):
    """`gen-ssd pipeline` runs the code location's definitions: the same assets, deps, automation
    conditions, checks, schedules and sensors; its default selection is every asset but the experiments."""
    from gen_ssd_dagster.definitions import EXPERIMENTS, PIPELINE, defs
    from gen_ssd_dagster.pipeline import home_definitions
    from gen_ssd_dagster.store import Home

    def shape(definitions: dg.Definitions):
        graph = definitions.resolve_asset_graph()
        assets = {k: (graph.get(k).parent_keys, graph.get(k).automation_condition, graph.get(k).code_version)
                  for k in graph.get_all_asset_keys()}
        return (assets, set(graph.asset_check_keys), {s.name for s in definitions.schedules or []},
                {s.name for s in definitions.sensors or []}, {j.name for j in definitions.resolve_all_job_defs()},
                sorted(definitions.resources))

    cli, dev = home_definitions(Home.resolve(tmp_path / "home")), defs()
    assert shape(cli) == shape(dev)
    graph = cli.resolve_asset_graph()
    assert {k.to_user_string() for k in EXPERIMENTS.resolve(graph)} == {"method_comparison", "gen_ssd_knob_sweep"}
    assert PIPELINE.resolve(graph) == graph.materializable_asset_keys - EXPERIMENTS.resolve(graph)


def test_the_teacher_check_cron_follows_the_environment():
    """$GEN_SSD_TEACHER_CHECK_CRON, read when the definitions load (a fresh process), sets the
    schedule; without it the schedule is the default."""
    from gen_ssd_dagster.defs.automation import CRON_ENV, DEFAULT_CRON

    code = ("from gen_ssd_dagster.definitions import defs\n"
            "print(defs().get_schedule_def('teacher_check_schedule').cron_schedule)\n")
    env = {k: v for k, v in os.environ.items() if k != CRON_ENV}
    for value, expected in (("*/5 * * * *", "*/5 * * * *"), (None, DEFAULT_CRON)):
        run_env = env if value is None else {**env, CRON_ENV: value}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
        assert out.stdout.splitlines()[-1] == expected


def test_defs_use_public_dagster_and_never_the_assembled_location():
    """Nothing under defs/ imports dagster's internals, definitions.py or an entry point."""
    import gen_ssd_dagster.defs as defs_package

    for path in Path(defs_package.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert not re.search(r"\bdagster\._", source), path.name
        assert not re.search(r"from \.\.(definitions|pipeline|cli)\b|import gen_ssd_dagster\.(definitions|pipeline|cli)",
                             source), path.name


# The entry points assemble the definitions (or launch them) and so sit above defs/; every other
# module of the package is below it.
ENTRY_POINTS = {"definitions.py", "pipeline.py", "cli.py", "scale_out.py", "tour.py"}


def test_nothing_below_defs_imports_defs():
    """Imports run one way: core, store, viewer, run_config, tracking and the helpers beside defs/
    never import from `defs` (only defs/ itself and the entry points do)."""
    import gen_ssd_dagster

    root = Path(gen_ssd_dagster.__file__).parent
    imports_defs = re.compile(r"^\s*(from\s+(\.+defs\b|gen_ssd_dagster\.defs\b|\.+\s+import\s+.*\bdefs\b)"
                              r"|import\s+gen_ssd_dagster\.defs\b)", re.MULTILINE)
    below = [p for p in root.rglob("*.py")
             if "defs" not in p.relative_to(root).parts[:1] and p.relative_to(root).as_posix() not in ENTRY_POINTS]
    assert len(below) > 30 and root / "tracking" / "training_runs.py" in below
    offenders = [p.relative_to(root).as_posix() for p in below if imports_defs.search(p.read_text())]
    assert offenders == []


def test_core_and_store_import_only_what_their_docstrings_allow():
    """core: no Dagster, DuckDB or MLflow, nothing else of the package; store: core's types only
    (never a method's code, engines or training: running a method is generation.py's), no Dagster."""
    import gen_ssd_dagster

    root = Path(gen_ssd_dagster.__file__).parent
    parts = ("store|viewer|defs|run_config|tracking|asset_metadata|teacher_chain|definitions|pipeline|cli"
             "|scale_out|instance|generation")
    algorithm = r"core\.(method\.(?!versions\b)|engines|training|demo|experiments)"
    rules = {
        "core": re.compile(rf"^\s*(import|from)\s+(dagster|duckdb|mlflow)\b"
                           rf"|^\s*from\s+(\.\.+|gen_ssd_dagster\.)({parts})\b", re.MULTILINE),
        "store": re.compile(rf"^\s*(import|from)\s+dagster\b|^\s*from\s+(\.\.|gen_ssd_dagster\.)({parts})\b"
                            rf"|^\s*from\s+(\.\.|gen_ssd_dagster\.){algorithm}", re.MULTILINE),
    }
    for package, forbidden in rules.items():
        files = list((root / package).rglob("*.py"))
        assert files
        assert [p.relative_to(root).as_posix() for p in files if forbidden.search(p.read_text())] == []


# One teacher change, tick by tick: the teacher and cold start, then every partition materialized
# before (and no other), then the students and the evaluation once all their trajectories are re-done.
CHAIN_TICKS = [
    {"teacher": {None}, "cold_start_student": {None}},
    {"pruning_thresholds": {"demo"}, "gen_ssd_trajectories": {"demo"}, "standard_kd_trajectories": {"demo"},
     "posthoc_trajectories": {"demo", "gsm8k"}},
    {"distilled_students/gen_ssd": {None}, "distilled_students/standard_kd": {None},
     "distilled_students/posthoc": {None}, "evaluation_scores": {None}},
]


def test_teacher_change_reruns_in_order_over_materialized_partitions(tmp_path, monkeypatch, tiny_models):
    from gen_ssd_dagster.core.engines.models import model_version
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.defs import automation

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models[0], teacher)
    home, instance, real = _setup(tmp_path, monkeypatch, teacher, tiny_models[1])
    defs = standins(real, str(teacher))
    v1 = model_version(ModelSpec(str(teacher)))

    # a home a pipeline ran on before: demo everywhere, and posthoc trajectories of gsm8k too
    unpartitioned = [automation.TEACHER, automation.COLD_START, *automation.STUDENTS, automation.EVALUATION]
    _materialize(defs, instance, unpartitioned)
    _materialize(defs, instance, [automation.THRESHOLDS, *automation.TRAJECTORY_ASSETS], "demo")
    _materialize(defs, instance, [dg.AssetKey("posthoc_trajectories")], "gsm8k")
    assert automation.last_teacher_version(instance) == v1
    # the daemon ticks before anything is observed; the first observation ever recorded is an update
    # to Dagster, but it repeats the materialized version: nothing runs
    ticks, cursor = _run_until_idle(defs, instance, None)
    assert ticks == []
    assert _observe(defs, instance) == v1
    ticks, cursor = _run_until_idle(defs, instance, cursor)
    assert ticks == []

    # unchanged teacher: nothing; a teacher materialized by hand (or `gen-ssd pipeline`): nothing
    assert _observe(defs, instance) == v1
    _materialize(defs, instance, [automation.TEACHER])
    ticks, cursor = _run_until_idle(defs, instance, cursor)
    assert ticks == []
    # the checkpoint gone for a while: not observed, the known version is repeated, nothing runs
    shutil.move(teacher, tmp_path / "away")
    assert _observe(defs, instance) == v1
    ticks, cursor = _run_until_idle(defs, instance, cursor)
    assert ticks == []
    shutil.move(tmp_path / "away", teacher)

    _touch_checkpoint(teacher)
    v2 = model_version(ModelSpec(str(teacher)))
    assert v2 != v1 and _observe(defs, instance) == v2
    ticks, cursor = _run_until_idle(defs, instance, cursor)
    assert ticks == CHAIN_TICKS
    assert automation.last_teacher_version(instance) == v2
    # the old teacher's materialization stays in the history beside the new one
    history = instance.fetch_materializations(automation.TEACHER, limit=10).records
    assert {r.asset_materialization.tags["dagster/data_version"] for r in history} == {v1, v2}

    # the next observations find nothing new
    assert _observe(defs, instance) == v2
    ticks, cursor = _run_until_idle(defs, instance, cursor)
    assert ticks == []

    # a change that arrives while a chain runs supersedes the rest of it: the trajectories wait for
    # the cold start of the newest teacher, and each stage runs once
    _touch_checkpoint(teacher)
    v3 = _observe(defs, instance)
    requested, cursor = _tick(defs, instance, cursor)
    assert requested == {"teacher": {None}, "cold_start_student": {None}}
    _materialize(defs, instance, [automation.TEACHER, automation.COLD_START], tags=automation.TRIGGER_TAGS)
    _touch_checkpoint(teacher)  # v4, observed before the v3 chain's trajectories were requested
    v4 = _observe(defs, instance)
    assert len({v1, v2, v3, v4}) == 4
    ticks, cursor = _run_until_idle(defs, instance, cursor)
    assert ticks == CHAIN_TICKS
    assert automation.last_teacher_version(instance) == v4


def test_work_never_starts_from_a_teacher_other_than_its_cold_starts(tmp_path, monkeypatch, tiny_models):
    """A teacher changed after the chain's teacher and cold start ran (a run launched just before a
    change): the trajectories refuse before generating, naming both versions, and write nothing."""
    from gen_ssd_dagster.core.engines.models import model_version
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.defs import automation
    from gen_ssd_dagster.store import Store

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models[0], teacher)
    home, instance, defs = _setup(tmp_path, monkeypatch, teacher, tiny_models[1])
    config = _run_config()
    _materialize(defs, instance, [dg.AssetKey("problems")], "demo", run_config=config)
    _materialize(defs, instance, [automation.TEACHER, dg.AssetKey("base_student"), automation.COLD_START],
                 run_config=config)
    v1 = automation.last_teacher_version(instance)

    def trajectories():
        ops = {"standard_kd_trajectories": config["ops"]["standard_kd_trajectories"]}
        result = dg.materialize(list(defs.assets), instance=instance, selection=["standard_kd_trajectories"],
                                partition_key="demo", resources=defs.resources, run_config={"ops": ops},
                                raise_on_error=False)
        return result.success, " ".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)

    _touch_checkpoint(teacher)
    v2 = model_version(ModelSpec(str(teacher)))
    ok, why = trajectories()
    assert not ok and f"it is now {v2}, the `teacher` asset holds {v1}" in why

    # the teacher re-done, but the cold start on record learnt from another teacher
    _materialize(defs, instance, [automation.TEACHER], run_config=config)
    instance.report_runless_asset_event(dg.AssetMaterialization(automation.COLD_START,
                                                                metadata={"teacher_version": v1}))
    ok, why = trajectories()
    assert not ok and f"cold_start_student was trained from teacher {v1}, not from the teacher now in use ({v2})" in why
    assert Store(home.db_path).query("SELECT count(*) FROM trajectories")[0][0] == 0

    # with the chain in order the same asset runs
    _materialize(defs, instance, [automation.COLD_START], run_config=config)
    assert trajectories()[0]
    assert {v for (v,) in Store(home.db_path).query("SELECT DISTINCT teacher_version FROM trajectories")} == {v2}


def test_observations(tmp_path, monkeypatch):
    from gen_ssd_dagster.defs.automation import observe_teacher
    from gen_ssd_dagster.defs.resources import ModelsResource
    from gen_ssd_dagster.store import Home

    home = Home.resolve(tmp_path)
    demo = observe_teacher(ModelsResource(), home)
    assert demo.version is None and "not built" in demo.detail  # never builds the demo models itself
    missing = observe_teacher(ModelsResource(teacher=str(tmp_path / "nope")), home)
    assert missing.version is None and "config.json" in missing.detail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = observe_teacher(ModelsResource(teacher="org/model", teacher_revision="v2"), home)
    assert (hub.version, hub.source) == ("org/model@v2", "hub-unresolved") and "HF_HUB_OFFLINE" in hub.detail
    down = observe_teacher(ModelsResource(teacher="m", teacher_url="http://127.0.0.1:9"), home)
    assert down.version is None and "teacher server" in down.detail


def test_hub_branch_resolved_to_a_commit_when_online(tmp_path, monkeypatch):
    """Online, the sensor compares commits and the teacher asset pins the same commit."""
    import types

    import huggingface_hub

    from gen_ssd_dagster.core.engines.models import model_version
    from gen_ssd_dagster.defs.automation import observe_teacher
    from gen_ssd_dagster.defs.resources import ModelsResource
    from gen_ssd_dagster.store import Home

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, name, revision=None, timeout=None: asked.append((name, revision))
                        or types.SimpleNamespace(sha="c0ffee"))
    models = ModelsResource(teacher="org/model")
    obs = observe_teacher(models, Home.resolve(tmp_path))
    assert (obs.version, obs.source) == ("org/model@c0ffee", "hub") and asked == [("org/model", None)]
    spec = models.teacher_spec(Home.resolve(tmp_path))
    assert spec.revision == "c0ffee" and model_version(spec) == obs.version


@pytest.fixture(scope="module")
def taught_teacher(tmp_path_factory, tiny_models):
    """The tiny teacher fine-tuned until it reproduces the first three demo train solutions."""
    from gen_ssd_dagster.core.data import benchmarks as core_data
    from gen_ssd_dagster.core.demo.world import write_demo_dataset
    from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune

    root = tmp_path_factory.mktemp("taught")
    write_demo_dataset(root, DEMO["demo_train"], DEMO["demo_test"], DEMO["demo_seed"])
    train = core_data.load_problems(core_data.BUILTIN_DATASETS["demo"]["train"], data_dir=root)
    examples = [(p.question, p.solution) for p in train[:3]]
    config = TrainConfig(epochs=80, learning_rate=4e-3, batch_size=3, warmup_steps=5, bf16=True)
    return fine_tune(tiny_models[0], examples, root / "teacher", config).path, examples


@pytest.mark.slow
def test_teacher_change_reruns_everything_and_lineage_tells_versions_apart(tmp_path, monkeypatch, tiny_models,
                                                                           taught_teacher, capsys):
    from gen_ssd_dagster import cli
    from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
    from gen_ssd_dagster.defs import automation
    from gen_ssd_dagster.pipeline import run_pipeline

    teacher = tmp_path / "teacher"
    shutil.copytree(taught_teacher[0], teacher)
    home, instance, defs = _setup(tmp_path, monkeypatch, teacher, tiny_models[1])
    overrides = {k: defs.resources[k] for k in ("models", "data")}
    first = run_pipeline(home, "demo", _run_config(), overrides, log=lambda _: None)
    assert first.success
    v1 = automation.last_teacher_version(instance)
    assert _observe(defs, instance) == v1
    ticks, cursor = _run_until_idle(defs, instance, None, _run_config())
    assert ticks == []

    # a new teacher checkpoint in the same place: a little more training
    more = fine_tune(teacher, taught_teacher[1], tmp_path / "teacher_v2",
                     TrainConfig(epochs=5, learning_rate=1e-3, batch_size=3, warmup_steps=0, bf16=True, seed=1))
    shutil.rmtree(teacher)
    shutil.copytree(more.path, teacher)
    v2 = _observe(defs, instance)
    assert v2 != v1
    ticks, cursor = _run_until_idle(defs, instance, cursor, _run_config())
    assert [sorted(t) for t in ticks] == [
        ["cold_start_student", "teacher"],
        ["gen_ssd_trajectories", "posthoc_trajectories", "pruning_thresholds", "standard_kd_trajectories"],
        ["distilled_students/gen_ssd", "distilled_students/posthoc", "distilled_students/standard_kd",
         "evaluation_scores"]]
    assert automation.last_teacher_version(instance) == v2
    assert _observe(defs, instance) == v2 and _run_until_idle(defs, instance, cursor)[0] == []

    # both teachers' trajectories are kept, side by side
    from gen_ssd_dagster.store import Store

    store = Store(home.db_path)
    kept = dict(store.query("SELECT teacher_version, count(*) FROM trajectories GROUP BY 1"))
    assert set(kept) == {v1, v2}

    # the UI metadata of the re-run names the teacher, the student, the config and the MLflow run
    mat = instance.get_latest_materialization_event(dg.AssetKey(["distilled_students", "gen_ssd"])).asset_materialization
    for key in ("teacher_version", "student_version", "config_hash", "mlflow_run_id", "registered_model"):
        assert key in mat.metadata, key
    assert mat.metadata["teacher_version"].value == v2

    # lineage: two model versions, one per teacher
    capsys.readouterr()
    answers = {}
    for version in ("1", "2"):
        assert cli.main(["--home", str(home.root), "lineage", "--model", "gen-ssd-student-gen-ssd",
                         "--version", version, "--json"]) == 0
        answers[version] = json.loads(capsys.readouterr().out)
    assert answers["1"]["teacher_version"] == v1 and answers["2"]["teacher_version"] == v2
    for answer in answers.values():
        assert answer["datasets"][0]["dataset"] == "demo"
        assert answer["trajectories"] == answer["datasets"][0]["selected"] > 0
        assert [s["benchmark"] for s in answer["scores"]] == ["demo"]  # the version MLflow records is the evaluated one
    assert cli.main(["--home", str(home.root), "lineage", "--run-id", answers["2"]["mlflow_run_id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == answers["2"]["model_version"]

    assert cli.main(["--home", str(home.root), "lineage", "--dataset", "demo", "--json"]) == 0
    reverse = json.loads(capsys.readouterr().out)
    students = {(m["registered_model"], m["teacher_version"]) for m in reverse["models"]}
    assert {("gen-ssd-student-gen-ssd", v1), ("gen-ssd-student-gen-ssd", v2)} <= students
    assert {t["teacher_version"] for t in reverse["trajectories"]} == {v1, v2}
    assert cli.main(["--home", str(home.root), "lineage", "--model", "gen-ssd-student-gen-ssd", "--version", "2"]) == 0
    text = capsys.readouterr().out
    assert v2 in text and "demo" in text


def test_teacher_change_requests_every_shard_of_a_dataset(tmp_path, tiny_models):
    """With GEN_SSD_SHARDS=4 (a process of its own: tests/sharded_automation.py), a changed teacher
    re-runs every shard of the dataset, in one tick, before the students."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models[0], teacher)
    spec = {"home": str(tmp_path / "home"), "teacher": str(teacher), "student": str(tiny_models[1])}
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "GEN_SSD_SHARDS": "4", "GEN_SSD_HOME": spec["home"], "PYTHONPATH": str(tests.parent)}
    done = subprocess.run([sys.executable, str(tests / "sharded_automation.py"), json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    shards = [f"demo|{s}-of-4" for s in range(4)]
    assert result["before"] == []  # the first observation repeats the materialized teacher
    assert result["after"] == [
        {"teacher": [None], "cold_start_student": [None]},
        {"pruning_thresholds": ["demo"], "gen_ssd_trajectories": shards, "standard_kd_trajectories": shards,
         "posthoc_trajectories": shards},
        {"distilled_students/gen_ssd": [None], "distilled_students/standard_kd": [None],
         "distilled_students/posthoc": [None], "evaluation_scores": [None]},
    ], result["after"]
