"""Teacher-change automation: the sensor and the schedule on a real Dagster instance in a tmp home.

The fast tests only materialize `teacher` (a fingerprint, no model loaded) and evaluate the sensor
and the schedule with Dagster's own `build_sensor_context` / `build_schedule_context`. The
end-to-end test trains a tiny teacher that knows three demo solutions, runs the pipeline, changes
the teacher's checkpoint, executes the backfill the sensor requested, and reads the lineage.
"""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

SMALL = {"max_problems": 3, "offset": 0, "batch_size": 3, "max_new_tokens": 64, "num_candidates": 2,
         "temperature": 0.3}
DEMO = {"demo_train": 12, "demo_test": 3, "demo_seed": 0}


def _run_config() -> dict:
    return {"ops": {
        "problems": {"config": {"max_problems": 6}},
        "cold_start_student": {"config": {"max_problems": 0}},  # the base student scores (fast)
        "gen_ssd_trajectories": {"config": {**SMALL, "chunk_tokens": 16, "suitability": "none"}},
        "standard_kd_trajectories": {"config": SMALL},
        "posthoc_trajectories": {"config": SMALL},
        **{f"distilled_students__{m}": {"config": {"epochs": 1}} for m in ("gen_ssd", "standard_kd", "posthoc")},
        "evaluation_scores": {"config": {"max_new_tokens": 48}},
    }}


def _setup(tmp_path, monkeypatch, teacher, student):
    """(home, instance, definitions with the sensor and schedule, resource overrides)."""
    from gen_ssd_dagster.definitions import ASSETS, CHECKS, resources
    from gen_ssd_dagster.defs import automation
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.instance import get_instance
    from gen_ssd_dagster.store import Home

    home = Home.resolve(tmp_path / "home").make()
    monkeypatch.setenv("GEN_SSD_HOME", str(home.root))  # restored after the test (run_pipeline sets it)
    monkeypatch.delenv(automation.PARTITIONS_ENV, raising=False)
    overrides = {"models": ModelsResource(teacher=str(teacher), student=str(student)), "data": DataResource(**DEMO)}
    defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, resources=resources(str(home.root), **overrides),
                          sensors=[automation.teacher_change_sensor], schedules=[automation.teacher_check_schedule],
                          jobs=[automation.teacher_refresh_job])
    return home, get_instance(home), defs, overrides


def _sensor_tick(instance, defs, cursor=None):
    from gen_ssd_dagster.defs.automation import teacher_change_sensor

    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                 resources=defs.resources) as context:  # exiting resets Dagster's globals
        return teacher_change_sensor.evaluate_tick(context)


def _schedule_tick(instance, defs):
    from gen_ssd_dagster.defs.automation import teacher_check_schedule

    repo = defs.get_repository_def()
    with dg.build_schedule_context(instance=instance, repository_def=repo, resources=defs.resources) as context:
        return teacher_check_schedule.evaluate_tick(context)


def _materialize_teacher(home, overrides):
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset

    from gen_ssd_dagster.defs.automation import TEACHER, run_subset_in_process

    [result] = run_subset_in_process(AssetGraphSubset(non_partitioned_asset_keys={TEACHER}), home,
                                     resource_overrides=overrides, log=lambda _: None)
    assert result.success
    return result


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

    assert defs.get_sensor_def("teacher_change_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    schedule = defs.get_schedule_def("teacher_check_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_job_def("teacher_refresh") is not None


def test_unchanged_teacher_skips_and_a_change_requests_the_ordered_backfill(tmp_path, monkeypatch, tiny_models):
    from gen_ssd_dagster.core.engines.backends import model_version
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.defs import automation

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models[0], teacher)
    home, instance, defs, overrides = _setup(tmp_path, monkeypatch, teacher, tiny_models[1])
    v1 = model_version(ModelSpec(str(teacher)))

    # nothing materialized yet: nothing to compare with, no run, the version is remembered
    tick = _sensor_tick(instance, defs)
    assert not tick.run_requests and "no teacher materialized yet" in tick.skip_message
    assert tick.cursor == v1

    _materialize_teacher(home, overrides)
    assert automation.last_teacher_version(instance) == v1
    tick = _sensor_tick(instance, defs)  # no cursor: compares with the materialized version
    assert not tick.run_requests and tick.skip_message == f"teacher version {v1} unchanged (checkpoint)"
    tick = _sensor_tick(instance, defs, cursor=v1)
    assert not tick.run_requests and v1 in tick.skip_message
    schedule_tick = _schedule_tick(instance, defs)
    assert not schedule_tick.run_requests and "unchanged" in schedule_tick.skip_message
    assert not instance.get_backfills()

    _touch_checkpoint(teacher)
    v2 = model_version(ModelSpec(str(teacher)))
    assert v2 != v1
    tick = _sensor_tick(instance, defs, cursor=v1)
    assert tick.cursor == v2 and not tick.skip_message
    [request] = tick.run_requests
    assert request.requires_backfill_daemon()
    assert request.tags[automation.VERSION_TAG] == v2 and request.tags[automation.PREVIOUS_TAG] == v1
    subset = request.asset_graph_subset
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in subset.asset_keys} == {
        "teacher", "cold_start_student", "pruning_thresholds", "gen_ssd_trajectories", "standard_kd_trajectories",
        "posthoc_trajectories",
        "distilled_students/gen_ssd", "distilled_students/standard_kd", "distilled_students/posthoc",
        "evaluation_scores"}
    # no trajectory partition materialized yet: the distillation's default partitions
    assert set(subset.get_partitions_subset(dg.AssetKey("gen_ssd_trajectories")).get_partition_keys()) == {"demo"}
    # the thresholds before Gen-SSD, trajectories before the students, the students before the evaluation
    stages = [([k.to_user_string() for k in keys], parts) for keys, parts in automation.subset_stages(graph, subset)]
    assert stages == [
        (["teacher", "cold_start_student"], [None]),
        (["posthoc_trajectories", "pruning_thresholds", "standard_kd_trajectories"], ["demo"]),
        (["distilled_students/posthoc", "distilled_students/standard_kd"], [None]),
        (["gen_ssd_trajectories"], ["demo"]),
        (["distilled_students/gen_ssd", "evaluation_scores"], [None]),
    ]
    # the next tick, cursor advanced: nothing new
    again = _sensor_tick(instance, defs, cursor=tick.cursor)
    assert not again.run_requests and f"teacher version {v2} unchanged" in again.skip_message

    # the schedule (no cursor) submits the same backfill once, then waits for it
    first = _schedule_tick(instance, defs)
    assert not first.run_requests and "submitted backfill" in first.skip_message
    [backfill] = instance.get_backfills()
    assert backfill.tags[automation.VERSION_TAG] == v2
    assert backfill.asset_backfill_data.target_subset == subset
    second = _schedule_tick(instance, defs)
    assert "already in progress" in second.skip_message and len(instance.get_backfills()) == 1

    # the new teacher materialized by hand meanwhile: a sensor still at the old cursor does not re-run it
    _materialize_teacher(home, overrides)
    late = _sensor_tick(instance, defs, cursor=v1)
    assert not late.run_requests and f"teacher version {v2} unchanged" in late.skip_message


def test_refresh_partitions_setting(tmp_path, monkeypatch, tiny_models):
    from gen_ssd_dagster.defs import automation
    from gen_ssd_dagster.defs.datasets import DATASETS

    home, instance, defs, overrides = _setup(tmp_path, monkeypatch, tiny_models[0], tiny_models[1])
    assert automation.refresh_partitions(instance, "all") == DATASETS.get_partition_keys()
    assert automation.refresh_partitions(instance, "gsm8k, nope,demo") == ["gsm8k", "demo"]
    instance.report_runless_asset_event(dg.AssetMaterialization("posthoc_trajectories", partition="gsm8k"))
    assert automation.refresh_partitions(instance, "materialized") == ["gsm8k"]
    monkeypatch.setenv(automation.PARTITIONS_ENV, "all")
    assert automation.refresh_partitions(instance) == DATASETS.get_partition_keys()


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

    from gen_ssd_dagster.core.engines.backends import model_version
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
    home, instance, defs, overrides = _setup(tmp_path, monkeypatch, teacher, tiny_models[1])
    first = run_pipeline(home, "demo", _run_config(), overrides, log=lambda _: None)
    assert first.success
    v1 = automation.last_teacher_version(instance)
    tick = _sensor_tick(instance, defs)
    assert not tick.run_requests and f"teacher version {v1} unchanged" in tick.skip_message

    # a new teacher checkpoint in the same place: a little more training
    more = fine_tune(teacher, taught_teacher[1], tmp_path / "teacher_v2",
                     TrainConfig(epochs=5, learning_rate=1e-3, batch_size=3, warmup_steps=0, bf16=True, seed=1))
    shutil.rmtree(teacher)
    shutil.copytree(more.path, teacher)
    tick = _sensor_tick(instance, defs, cursor=tick.cursor)
    [request] = tick.run_requests
    v2 = request.tags[automation.VERSION_TAG]
    assert v2 != v1 and tick.cursor == v2

    results = automation.run_subset_in_process(request.asset_graph_subset, home, _run_config(), overrides,
                                               tags=request.tags, log=lambda _: None)
    assert [r.success for r in results] == [True] * 5  # one run per stage, as the first test lists them
    assert automation.last_teacher_version(instance) == v2
    assert not _sensor_tick(instance, defs, cursor=tick.cursor).run_requests
    assert "unchanged" in _schedule_tick(instance, defs).skip_message

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
