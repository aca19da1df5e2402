"""The Dagster layer: assets materialized with `dagster.materialize` on a real instance in a tmp home.

Fast tests use the tiny random models of conftest (cold start skipped, so nothing needs to be
correct); the slow one runs every asset on the embedded demo with small trained demo models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO_SIZES, data_dir, run_processes  # memorizing_teacher: a conftest fixture

TRAJ_ASSETS = ["gen_ssd_trajectories", "standard_kd_trajectories", "posthoc_trajectories"]
SMALL = {"max_problems": 3, "offset": 0, "batch_size": 2, "num_candidates": 2, "sampling": {"max_new_tokens": 24}}


def _run_config(**gen_ssd) -> dict:
    return {"ops": {
        "problems": {"config": {"max_problems": 6}},
        "cold_start_student": {"config": {"max_problems": 0}},  # skipped: the tiny models are random
        "gen_ssd_trajectories": {"config": {**SMALL, "chunk_tokens": 8, "suitability": "none", **gen_ssd}},
        "standard_kd_trajectories": {"config": SMALL},
        "posthoc_trajectories": {"config": SMALL},
    }}


def _materialize(home, teacher, student, partition, assets, run_config):
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    return run_pipeline(
        Home.resolve(home), partition, run_config,
        {"models": ModelsResource(teacher=str(teacher), student=str(student)),
         "data": DataResource(demo_train=12, demo_test=4, data_dir=str(data_dir()))},
        log=lambda _: None, selection=assets)


def _materialization(result, asset):
    return next(e for e in result.get_asset_materialization_events()
                if e.asset_key.to_user_string() == asset).step_materialization_data.materialization


def _store(home):
    from gen_ssd_dagster.store import Home, Store

    return Store(Home.resolve(home).db_path)


UPSTREAM = ["teacher", "base_student", "problems", "cold_start_student"]


def test_definitions_load():
    import dagster as dg

    from gen_ssd_dagster.definitions import defs

    loaded = defs()
    dg.Definitions.validate_loadable(loaded)
    graph = loaded.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"teacher", "base_student", "problems", "benchmarks", "cold_start_student", *TRAJ_ASSETS,
            "distilled_students/gen_ssd", "distilled_students/standard_kd", "distilled_students/posthoc",
            "evaluation_scores"} <= keys
    partitions = graph.get(dg.AssetKey("gen_ssd_trajectories")).partitions_def.get_partition_keys()
    assert {"demo", "gsm8k", "math500", "aime24", "amc23"} <= set(partitions)


def test_trajectories_stored_and_reused(tmp_path, tiny_models):
    teacher, student = tiny_models
    home = tmp_path / "home"
    result = _materialize(home, teacher, student, "demo", UPSTREAM + TRAJ_ASSETS, _run_config())
    assert result.success
    store = _store(home)
    counts = dict(store.query("SELECT method, count(*) FROM trajectories WHERE dataset = 'demo' GROUP BY method"))
    assert counts == {"gen_ssd": 3, "standard_kd": 6, "posthoc": 6}  # 3 problems, K=2 full samples for baselines
    assert store.query("SELECT count(*) FROM candidates")[0][0] > 0
    import json

    stored = json.loads(store.query("SELECT config FROM trajectories WHERE method = 'gen_ssd' LIMIT 1")[0][0])
    assert stored["prompts"]["teacher"]["format"] == "plain" and stored["prompts"]["student"]["instruction"] is None
    assert stored["sampling"]["solution_end"] == "answer_line"  # the demo dataset's own
    md = _materialization(result, "gen_ssd_trajectories").metadata
    assert md["trajectories"].value == 3 and md["new_problems"].value == 3
    for key in ("finished", "pruned", "length_capped", "acceptance_rate", "teacher_tokens", "mean_chosen_ppl",
                "mean_rejected_ppl", "sample_trajectory", "ppl_chosen_vs_rejected", "teacher_version"):
        assert key in md, key
    assert md["engines"].value == {"backend": "transformers"}  # vLLM engine settings, when used (test_engine_settings)
    first = store.query("SELECT trajectory_key, created_at FROM trajectories ORDER BY 1")

    again = _materialize(home, teacher, student, "demo", TRAJ_ASSETS, _run_config())
    assert again.success
    assert store.query("SELECT trajectory_key, created_at FROM trajectories ORDER BY 1") == first
    md = _materialization(again, "gen_ssd_trajectories").metadata
    assert (md["new_problems"].value, md["reused_problems"].value) == (0, 3)

    # one changed knob is a new key: new work, old rows kept beside it
    changed = _materialize(home, teacher, student, "demo", ["gen_ssd_trajectories"], _run_config(num_candidates=3))
    assert changed.success
    hashes = store.query("SELECT DISTINCT config_hash FROM trajectories WHERE method = 'gen_ssd'")
    assert len(hashes) == 2


def test_gsm8k_partition(tmp_path, tiny_models):
    if not (data_dir() / "gsm8k" / "train.jsonl").is_file():
        pytest.skip("no GSM8K data (set GEN_SSD_DATA_DIR)")
    teacher, student = tiny_models
    home = tmp_path / "home"
    rc = _run_config()
    rc["ops"]["problems"] = {"config": {"max_problems": 4}}
    rc["ops"]["benchmarks"] = {"config": {"max_problems": 4}}
    result = _materialize(home, teacher, student, "gsm8k",
                          ["teacher", "base_student", "problems", "benchmarks", "cold_start_student",
                           "gen_ssd_trajectories"], rc)
    assert result.success
    store = _store(home)
    assert store.query("SELECT side, count(*) FROM problems WHERE dataset = 'gsm8k' GROUP BY side ORDER BY side") \
        == [("test", 4), ("train", 4)]
    rows = store.query("SELECT DISTINCT dataset, method FROM trajectories")
    assert rows == [("gsm8k", "gen_ssd")]


def _child(home, teacher, student, partition):
    result = _materialize(home, teacher, student, partition, ["problems", "gen_ssd_trajectories"], _run_config())
    raise SystemExit(0 if result.success else 1)


def test_two_partitions_in_parallel(tmp_path, tiny_models):
    if not (data_dir() / "gsm8k" / "train.jsonl").is_file():
        pytest.skip("no GSM8K data (set GEN_SSD_DATA_DIR)")
    teacher, student = tiny_models
    home = tmp_path / "home"
    assert _materialize(home, teacher, student, "demo", UPSTREAM, _run_config()).success
    assert run_processes(_child, [(home, teacher, student, p) for p in ("demo", "gsm8k")], 600) == [0, 0]
    rows = dict(_store(home).query("SELECT dataset, count(*) FROM trajectories GROUP BY dataset"))
    assert rows == {"demo": 3, "gsm8k": 3}
    done = dict(_store(home).query("SELECT dataset, count(*) FROM problem_runs GROUP BY dataset"))
    assert done == {"demo": 3, "gsm8k": 3}


@pytest.mark.slow
def test_every_asset_on_demo(tmp_path, tiny_models, memorizing_teacher, capsys):
    """The whole graph on the demo partition; DuckDB and MLflow hold what the assets claim."""
    from mlflow import MlflowClient

    from gen_ssd_dagster import cli
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    home = Home.resolve(tmp_path / "home")
    sampling = {"max_new_tokens": 128, "temperature": 0.3}
    small = {"batch_size": 4, "num_candidates": 2, "sampling": sampling}
    rc = {"ops": {
        "cold_start_student": {"config": {**small, "max_problems": 4, "train": {"epochs": 2}}},
        "pruning_thresholds": {"config": {"max_problems": 4, "rule": "median_multiple"}},  # sampling as gen_ssd_trajectories
        "gen_ssd_trajectories": {"config": {**small, "max_problems": 4, "offset": 4, "suitability": "none"}},
        "standard_kd_trajectories": {"config": {**small, "max_problems": 4, "offset": 4}},
        "posthoc_trajectories": {"config": {**small, "max_problems": 4, "offset": 4}},
        **{f"distilled_students__{m}": {"config": {"train": {"epochs": 1}}} for m in ("gen_ssd", "standard_kd", "posthoc")},
        "evaluation_scores": {"config": {"max_new_tokens": 128}},
    }}
    result = run_pipeline(home, "demo", rc, {
        "models": ModelsResource(teacher=str(memorizing_teacher), student=str(tiny_models[1])),
        "data": DataResource(**DEMO_SIZES)}, log=lambda _: None)
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert len(materialized) == 16, materialized  # training_datasets/<method>: 3 of them
    # what the assets told the event log reads as sentences, never a Python dict
    from gen_ssd_dagster.instance import get_instance

    said = [e.user_message for e in get_instance(home).all_logs(result.run_id) if e.dagster_event is None]
    assert any(m.startswith("calibrated by median_multiple: max_ppl") for m in said), said
    assert not [m for m in said if "{'" in m or '{"' in m], said

    store = _store(home.root)
    # the calibration, run with the graph (Gen-SSD reads it at the end of this test)
    events = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
              for e in result.get_asset_materialization_events()}
    thresholds = events["pruning_thresholds"]
    assert thresholds["quantile"].value == 0.9 and thresholds["rule"].value == "median_multiple"
    scores = store.query_df("SELECT student, benchmark, accuracy, grader_version, mlflow_run_id, model_version"
                            " FROM evaluation_scores")
    assert set(scores.student) == {"base", "cold_start", "gen_ssd", "standard_kd", "posthoc"}
    assert (scores.grader_version != "").all()

    client = MlflowClient(home.mlflow_uri)
    run = client.get_run(scores.mlflow_run_id.iloc[0])
    for row in scores.itertuples():
        assert run.data.metrics[f"accuracy.{row.student}.{row.benchmark}"] == pytest.approx(row.accuracy)
        assert run.data.metrics[f"low.{row.student}.{row.benchmark}"] <= row.accuracy \
            <= run.data.metrics[f"high.{row.student}.{row.benchmark}"]  # the 95% interval
    exp = client.get_experiment_by_name("gen-ssd")
    statuses = {r.info.status for r in client.search_runs([exp.experiment_id])}
    assert statuses == {"FINISHED"}
    mv = client.search_model_versions("name = 'gen-ssd-student-gen-ssd'")[0]
    assert mv.tags["method"] == "gen_ssd" and mv.tags["partitions"] == "demo"
    n_selected = store.query("SELECT count(*) FROM trajectories WHERE method = 'gen_ssd' AND selected")[0][0]
    assert int(mv.tags["trajectories"]) == n_selected > 0
    teacher_version = store.query("SELECT DISTINCT teacher_version FROM trajectories WHERE method = 'gen_ssd'")[0][0]
    assert mv.tags["teacher_version"] == teacher_version
    # the registered version is the one evaluated (its checkpoint was not touched after logging)
    assert mv.tags["model_version"] == scores.set_index("student").loc["gen_ssd", "model_version"]
    # the trajectories it learned from, step by step: a page beside the asset and in the MLflow run
    page = Path(events["gen_ssd_trajectories"]["trajectory_viewer"].value)
    gen_ssd_keys = [k for (k,) in store.query("SELECT trajectory_key FROM trajectories WHERE method = 'gen_ssd'")]
    assert all(f'id="t-{k}"' in page.read_text() for k in gen_ssd_keys)
    assert [a.path for a in client.list_artifacts(mv.run_id, "trajectories")] == [f"trajectories/{page.name}"]

    assert cli.main(["--home", str(home.root), "report", "--json"]) == 0

    report = json.loads(capsys.readouterr().out)
    reported = report["scores"]
    assert {(r["student"], r["benchmark"]): r["accuracy"] for r in reported} == \
        {(r.student, r.benchmark): r.accuracy for r in scores.itertuples()}
    assert all(r["interval95"]["n_questions"] == DEMO_SIZES["demo_test"] for r in reported)
    assert {d["student"] for d in report["differences"]} == {"base", "cold_start", "gen_ssd", "posthoc"}
    assert cli.main(["--home", str(home.root), "report"]) == 0
    out = capsys.readouterr().out
    assert " ± " in out and "`make compare`" in out  # intervals, and the line that says what is noise

    # More test problems stored: every student is scored anew, not served the old test set's score.
    # Then sampled answers: each sample stored, the settings beside the score.
    def rescore(**settings):
        rc["ops"]["evaluation_scores"]["config"].update(settings)
        assert run_pipeline(home, "demo", rc, {
            "models": ModelsResource(teacher=str(memorizing_teacher), student=str(tiny_models[1])),
            "data": DataResource(**{**DEMO_SIZES, "demo_test": 6})}, log=lambda _: None,
            selection=["benchmarks", "evaluation_scores"]).success
        return store.query_df("SELECT student, n, samples, eval_settings FROM evaluation_scores"
                              " QUALIFY row_number() OVER (PARTITION BY student ORDER BY created_at DESC) = 1")

    assert set(rescore().n) == {6}
    latest = rescore(samples=2, temperature=1.0, maj_k=2)
    assert set(latest.n) == {6} and set(latest.samples) == {2}
    assert all(json.loads(s)["maj_k"] == 2 for s in latest.eval_settings)
    assert store.query("SELECT max(sample_index) FROM evaluation_outputs")[0][0] == 1
    assert cli.main(["--home", str(home.root), "report"]) == 0
    out = capsys.readouterr().out
    assert "demo (n=6, 2 samples each)" in out and "maj@2" in out and "2 samples per question" in out

    # Gen-SSD again under the calibrated thresholds: new work beside the hand-set run's
    rc["ops"]["gen_ssd_trajectories"]["config"]["thresholds"] = "calibrated"
    again = run_pipeline(home, "demo", rc, {
        "models": ModelsResource(teacher=str(memorizing_teacher), student=str(tiny_models[1])),
        "data": DataResource(**DEMO_SIZES)}, log=lambda _: None, selection=["gen_ssd_trajectories"])
    assert again.success
    configs = [json.loads(c).get("calibration") for (c,) in store.query(
        "SELECT DISTINCT config FROM trajectories WHERE method = 'gen_ssd'")]
    assert sorted(c["max_ppl"] if c else 0 for c in configs) == [0, thresholds["max_ppl"].value]
    assert [c["rule"] for c in configs if c] == ["median_multiple"]  # the rule is recorded with every trajectory
    [event] = again.get_asset_materialization_events()
    assert event.step_materialization_data.materialization.metadata["thresholds"].value == "calibrated"


def test_a_failed_step_is_named(tmp_path, tiny_models):
    """Distilling before any trajectory exists fails with a message that says what to do."""
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    teacher, student = tiny_models
    lines = []
    result = run_pipeline(
        Home.resolve(tmp_path / "home"), "demo", _run_config(),
        {"models": ModelsResource(teacher=str(teacher), student=str(student)),
         "data": DataResource(demo_train=12, demo_test=4)},
        log=lines.append, selection=UPSTREAM + ["distilled_students/gen_ssd"])
    assert not result.success
    assert any("distilled_students__gen_ssd failed" in line and "gen_ssd_trajectories[demo]" in line for line in lines), lines


def test_every_model_running_asset_is_in_the_gpu_pool():
    """A deployment limits GPUs with one pool (deploy/dagster.yaml): no asset that loads a model may escape it."""
    from gen_ssd_dagster.definitions import defs

    definitions = defs()
    pools = {key.to_user_string(): definitions.resolve_assets_def(key).op.pool
             for key in definitions.resolve_asset_graph().materializable_asset_keys}
    light = {"teacher", "base_student", "problems", "benchmarks",  # resolve paths and read data only
             *(f"training_datasets/{m}" for m in ("gen_ssd", "standard_kd", "posthoc"))}  # DuckDB to Parquet
    assert {k for k, pool in pools.items() if pool != "gpu"} == light
