"""The Dagster run config is derived from the core's config dataclasses: a bad choice is refused at
launch, every core knob is there with the core's default, and nested sections reach the core."""

import dataclasses
import typing

import dagster as dg
import pytest

from gen_ssd_dagster.core.demo.run import DemoConfig
from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings
from gen_ssd_dagster.core.experiments.comparison import ComparisonConfig
from gen_ssd_dagster.core.method.config import GenSSDConfig, PostHocConfig, SamplingConfig, StandardKDConfig
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.engines.engine_settings import EVAL_ENGINE, SCORER_ENGINE, TEACHER_ENGINE
from gen_ssd_dagster.defs.resources import (DemoModelsSettings, EvalEngineSettings, ModelsResource, ScorerEngineSettings,
                                            TeacherEngineSettings)
from gen_ssd_dagster.run_config import asset_configs as rc
from gen_ssd_dagster.run_config.derive import CoreConfig, field_docs

# Every run config class built on a core dataclass, with the core instance its defaults must equal.
DEMO_DEFAULTS, COMPARISON_DEFAULTS = DemoConfig(), ComparisonConfig()
DERIVED = [
    (rc.GenSSDTrajectoriesConfig, GenSSDConfig()),
    (rc.StandardKDTrajectoriesConfig, StandardKDConfig()), (rc.PostHocTrajectoriesConfig, PostHocConfig()),
    (rc.ColdStartConfig, DEMO_DEFAULTS.cold_start), (rc.ColdStartTrain, DEMO_DEFAULTS.cold_start_train),
    (rc.DistillTrain, DEMO_DEFAULTS.distill_train), (rc.EvaluationConfig, EvalSettings()),
    (rc.ComparisonRunConfig, COMPARISON_DEFAULTS), (rc.SweepRunConfig, COMPARISON_DEFAULTS),
    (DemoModelsSettings, DEMO_DEFAULTS.models), (TeacherEngineSettings, TEACHER_ENGINE),
    (ScorerEngineSettings, SCORER_ENGINE), (EvalEngineSettings, EVAL_ENGINE),
]
# Core fields a run config leaves out or sets otherwise, and why: anything else must be derived.
LEFT_OUT = {(GenSSDConfig, "calibration"),  # the pipeline fills it from pruning_thresholds
            (ComparisonConfig, "seeds")}  # the sweep has one `seed`
SET_OTHERWISE = {(SamplingConfig, "solution_end")}  # empty = the dataset's own


def _default(field):
    return field.default_factory() if field.default_factory is not None else field.default


def _check_defaults(cls, core, where):
    """Every field of `core`'s dataclass is a field of `cls` with `core`'s value as its default."""
    for f in dataclasses.fields(core):
        name = f"{where}.{f.name}"
        if (type(core), f.name) in LEFT_OUT and f.name not in cls.model_fields:
            continue
        assert f.name in cls.model_fields, f"core knob {name} is missing from {cls.__name__}"
        default, value = _default(cls.model_fields[f.name]), getattr(core, f.name)
        if (type(core), f.name) in SET_OTHERWISE:
            assert default is None, name
        elif dataclasses.is_dataclass(value):
            assert isinstance(default, CoreConfig), name
            _check_defaults(type(default), value, name)
        else:
            plain = tuple(default) if isinstance(value, tuple) else default
            assert plain == value, (name, default, value)


@pytest.mark.parametrize("cls, core", DERIVED, ids=[c.__name__ for c, _ in DERIVED])
def test_every_core_knob_is_in_the_run_config_with_its_default(cls, core):
    _check_defaults(cls, core, cls.__name__)
    # and the core's doc is the field's description
    for f in dataclasses.fields(core):
        if f.name in cls.model_fields and f.name in field_docs(type(core)):
            assert cls.model_fields[f.name].description == field_docs(type(core))[f.name]


def test_default_run_configs_convert_to_the_core_defaults():
    """The same core config (and so the same config hash of stored work) as the dataclasses' defaults."""
    for cls, core in [(rc.GenSSDTrajectoriesConfig, GenSSDConfig()), (rc.StandardKDTrajectoriesConfig, StandardKDConfig()),
                      (rc.PostHocTrajectoriesConfig, PostHocConfig())]:
        assert rc.method_config(cls(), "gsm8k") == core
        # An empty solution_end is the dataset's own: the demo world ends at its `#### N` line.
        assert rc.method_config(cls(), "demo").sampling.solution_end == "answer_line"
    assert rc.EvaluationConfig().settings() == EvalSettings()
    assert rc.DistillConfig().train.to_core() == DEMO_DEFAULTS.distill_train
    assert rc.ColdStartConfig().train.to_core() == DEMO_DEFAULTS.cold_start_train
    assert rc.ComparisonRunConfig().core(list(COMPARISON_DEFAULTS.seeds)) == dataclasses.replace(
        COMPARISON_DEFAULTS, gen_ssd=rc.method_config(rc.GenSSDTrajectoriesConfig(), "demo"),
        standard_kd=rc.method_config(rc.StandardKDTrajectoriesConfig(), "demo"))


def test_nested_sampling_and_train_reach_the_core():
    config = rc.GenSSDTrajectoriesConfig(chunk_tokens=5, suitability="absolute", ppl_normalisation="char",
                                sampling={"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 3,
                                          "solution_end": "boxed", "stop_strings": ["\n\n"], "keep": "finished"})
    core = rc.method_config(config, "demo")
    assert core == GenSSDConfig(chunk_tokens=5, suitability="absolute", ppl_normalisation="char",
                                sampling=SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=64, seed=3,
                                                        solution_end="boxed", stop_strings=("\n\n",), keep="finished"))
    assert all(type(v) is str for v in (core.suitability, core.ppl_normalisation, core.sampling.keep,
                                        core.sampling.solution_end))  # plain values, as stored and hashed
    cold = rc.ColdStartConfig(sampling={"keep": "finished"}, train={"batch_size": 4, "seed": 7, "epochs": 1.5})
    assert cold.to_core().sampling.keep == "finished"
    assert cold.train.to_core() == dataclasses.replace(DEMO_DEFAULTS.cold_start_train, batch_size=4, seed=7, epochs=1.5)
    sweep = rc.SweepRunConfig(train={"learning_rate": 1e-4}, gen_ssd={"sampling": {"temperature": 0.5}})
    core = sweep.core([4])
    assert core.seeds == (4,) and core.train.learning_rate == 1e-4 and core.gen_ssd.sampling.temperature == 0.5
    assert core.train == dataclasses.replace(COMPARISON_DEFAULTS.train, learning_rate=1e-4)


def _job(home):
    from gen_ssd_dagster.definitions import pipeline_definitions, resources

    return pipeline_definitions(resources(str(home))).resolve_implicit_global_asset_job_def()


@pytest.mark.parametrize("op, config, field", [
    ("gen_ssd_trajectories", {"suitability": "sometimes"}, "suitability"),
    ("posthoc_trajectories", {"ppl_normalisation": "word"}, "ppl_normalisation"),
    ("cold_start_student", {"sampling": {"keep": "some"}}, "keep"),
    ("evaluation_scores", {"solution_end": "dot"}, "solution_end"),
    ("method_comparison", {"gen_ssd": {"sampling": {"solution_end": "dot"}}}, "solution_end"),
    ("gen_ssd_trajectories", {"temperature": 0.5}, "temperature"),  # the old flat key: now under sampling
    ("distilled_students__gen_ssd", {"train_batch_size": 4}, "train_batch_size"),  # now train.batch_size
])
def test_bad_value_is_refused_at_launch_naming_the_field(tmp_path, op, config, field):
    with pytest.raises(dg.DagsterInvalidConfigError, match=field):
        dg.validate_run_config(_job(tmp_path), {"ops": {op: {"config": config}}})


def test_bad_choice_fails_before_any_step_runs(tmp_path):
    """Launched, a run with a bad choice stops at config validation: no run, no step starts."""
    instance = dg.DagsterInstance.ephemeral()
    run_config = {"ops": {"gen_ssd_trajectories": {"config": {"suitability": "sometimes"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="suitability") as error:
        _job(tmp_path).execute_in_process(run_config=run_config, instance=instance, partition_key="demo",
                                          raise_on_error=False)
    assert "sometimes" in str(error.value) and "root:ops:gen_ssd_trajectories:config:suitability" in str(error.value)
    assert instance.get_runs() == []
    assert not (tmp_path / "dagster").exists() and not any(tmp_path.iterdir())  # nothing written to the home


def test_literal_choices_are_enums_of_the_core_values():
    sampling = rc.GenSSDTrajectoriesConfig.model_fields["sampling"].annotation
    keep = typing.get_args(sampling.model_fields["keep"].annotation) or (sampling.model_fields["keep"].annotation,)
    assert {m.value for m in keep[0]} == {"correct", "finished"}
    assert {m.value for m in rc.GenSSDTrajectoriesConfig.model_fields["suitability"].annotation} == {"ratio", "absolute", "none"}


def test_run_configs_of_the_deployment_and_the_docs_are_valid(tmp_path):
    """deploy/pipeline.yaml and the YAML of docs/pipeline.md follow the derived run config
    (configs/*.yaml: tests/test_comparison.py)."""
    import re
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    block = re.search(r"```yaml\n(ops:.*?)```", (repo / "docs" / "pipeline.md").read_text(), re.S).group(1)
    job = _job(tmp_path)
    for ops in (yaml.safe_load((repo / "deploy" / "pipeline.yaml").read_text())["ops"], yaml.safe_load(block)["ops"]):
        assert dg.validate_run_config(job, {"ops": ops})


def test_models_resource_has_every_model_spec_setting_per_model():
    spec = ModelSpec("demo")
    for who in ("teacher", "student"):
        for f in dataclasses.fields(ModelSpec):
            key = who if f.name == "name_or_path" else f"{who}_{f.name}"
            assert key in ModelsResource.model_fields, key
            default = ModelsResource.model_fields[key].default
            assert default == (None if f.name == "dtype" else getattr(spec, f.name)), key  # dtype: the shared one
    models = ModelsResource(teacher="/m/t", teacher_chat_template="plain", teacher_instruction="Think.",
                            student_dtype="bfloat16", student_trust_remote_code=True)
    assert models.configured_spec("teacher") == ModelSpec("/m/t", chat_template="plain", instruction="Think.")
    assert models.configured_spec("student") == ModelSpec("demo", dtype="bfloat16", trust_remote_code=True)
    assert type(models.configured_spec("teacher").chat_template) is str
    with pytest.raises(Exception, match="teacher_chat_template"):
        ModelsResource(teacher_chat_template="sometimes")
