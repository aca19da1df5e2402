"""`gen-ssd lineage`: read back from MLflow tags and DuckDB rows as the distillation assets write them."""

from __future__ import annotations

import json

import pytest

from gen_ssd_dagster import cli
from gen_ssd_dagster.core.types import Candidate, Step, Trajectory
from gen_ssd_dagster.store import Home, Store
from gen_ssd_dagster.store.lineage import LineageError, dataset_lineage, model_lineage
from gen_ssd_dagster.store.scores import EvaluationScore, write_scores
from gen_ssd_dagster.store.trajectories import WorkKey, write_batch


def _traj(dataset, pid, selected=True):
    cand = Candidate(text="c", teacher_tokens=1, student_tokens=1, nll=1.0, ppl=2.0, passed=True)
    return Trajectory(dataset=dataset, problem_id=pid, method="gen_ssd", sample_index=0, question="q?", gold="4",
                      text="#### 4", end_reason="finished", teacher_tokens=1, student_tokens=1, ppl=2.0,
                      predicted="4", correct=selected, selected=selected, steps=[Step([cand], 0)])


def _register(home, teacher, partitions, hashes, n, model_version):
    """One model version as `training_runs.train_logged` registers it."""
    from gen_ssd_dagster.tracking.mlflow_client import MLflowSession

    session = MLflowSession(home.mlflow_uri, "gen-ssd", home.mlflow_artifacts, home.root / "mlflow.lock")
    tags = {"checkpoint_key": f"k-{teacher}", "base_version": "cold-1", "n_examples": n, "dagster_run_id": "dr1",
            "method": "gen_ssd", "partitions": ",".join(partitions),
            "config_hash": ",".join(f"{d}:{h}" for d, h in zip(partitions, hashes)),
            "teacher_version": teacher, "student_version": "cold-1", "trajectories": n}
    with session.run("student_gen_ssd", tags=tags) as run:
        run.log(params={"epochs": 1.0, "learning_rate": 0.001, **tags}, tags={"model_version": model_version})
        (home.root / "ckpt").mkdir(exist_ok=True)
        (home.root / "ckpt" / "config.json").write_text("{}")
        run.log_artifacts(home.root / "ckpt", "model")
        version = run.register("gen-ssd-student-gen-ssd", "model", tags={**tags, "model_version": model_version})
    return run.run_id, version


@pytest.fixture()
def home(tmp_path):
    home = Home.resolve(tmp_path / "home").make()
    store = Store(home.db_path)
    for teacher, h in (("teacher-aaa", "h1"), ("teacher-bbb", "h1")):
        key = WorkKey("demo", "gen_ssd", teacher, "cold-1", h)
        write_batch(store, key, ["p0", "p1", "p2"], [_traj("demo", "p0"), _traj("demo", "p1"),
                                                     _traj("demo", "p2", selected=False)], {"chunk_tokens": 8})
    write_batch(store, WorkKey("gsm8k", "gen_ssd", "teacher-bbb", "cold-1", "h9"), ["g0"], [_traj("gsm8k", "g0")], {})
    write_scores(store, [EvaluationScore("gen_ssd", "student-v2", "demo", 4, 3, 0.75, "g1", "e")])
    return home


def test_model_lineage_by_version_latest_and_run(home):
    run1, v1 = _register(home, "teacher-aaa", ["demo"], ["h1"], 2, "student-v1")
    run2, v2 = _register(home, "teacher-bbb", ["demo", "gsm8k"], ["h1", "h9"], 3, "student-v2")
    assert (v1, v2) == ("1", "2")

    old = model_lineage(home, "gen-ssd-student-gen-ssd", "1")
    assert (old["teacher_version"], old["mlflow_run_id"], old["trajectories"]) == ("teacher-aaa", run1, 2)
    [demo] = old["datasets"]
    assert (demo["dataset"], demo["config_hash"], demo["stored_trajectories"], demo["selected"]) == ("demo", "h1", 3, 2)
    assert demo["config"] == {"chunk_tokens": 8}
    assert old["training"] == {"epochs": "1.0", "learning_rate": "0.001"} and old["scores"] == []

    new = model_lineage(home, "gen_ssd")  # short name, newest version
    assert (new["version"], new["teacher_version"], new["partitions"]) == ("2", "teacher-bbb", ["demo", "gsm8k"])
    assert [d["selected"] for d in new["datasets"]] == [2, 1]
    assert new["scores"][0]["accuracy"] == 0.75
    assert model_lineage(home, run_id=run1)["version"] == "1"

    with pytest.raises(LineageError, match="no registered model"):
        model_lineage(home, "nope")
    with pytest.raises(LineageError, match="has no version"):
        model_lineage(home, "gen_ssd", "7")


def test_dataset_lineage_lists_models_and_both_teachers(home):
    _register(home, "teacher-aaa", ["demo"], ["h1"], 2, "student-v1")
    _register(home, "teacher-bbb", ["gsm8k"], ["h9"], 1, "student-v3")
    info = dataset_lineage(home, "demo")
    assert [(m["version"], m["teacher_version"], m["config_hash"]) for m in info["models"]] == [("1", "teacher-aaa", "h1")]
    assert {t["teacher_version"] for t in info["trajectories"]} == {"teacher-aaa", "teacher-bbb"}
    assert [m["version"] for m in dataset_lineage(home, "gsm8k")["models"]] == ["2"]
    assert dataset_lineage(home, "math500") == {"dataset": "math500", "models": [], "trajectories": []}


def test_cli(home, capsys):
    run1, _ = _register(home, "teacher-aaa", ["demo"], ["h1"], 2, "student-v1")
    assert cli.main(["--home", str(home.root), "lineage", "--model", "gen-ssd-student-gen-ssd", "--version", "1"]) == 0
    out = capsys.readouterr().out
    assert "teacher version    teacher-aaa" in out and "dataset demo" in out and "2 selected of 3" in out
    assert cli.main(["--home", str(home.root), "lineage", "--run-id", run1, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["teacher_version"] == "teacher-aaa"
    assert cli.main(["--home", str(home.root), "lineage", "--partition", "demo"]) == 0
    out = capsys.readouterr().out
    assert "gen-ssd-student-gen-ssd v1  teacher teacher-aaa" in out and "teacher teacher-bbb" in out
    assert cli.main(["--home", str(home.root), "lineage", "--model", "nope"]) == 2
    assert "no registered model 'nope'" in capsys.readouterr().err
    assert cli.main(["--home", str(home.root), "lineage"]) == 2


def test_cli_without_results(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "lineage", "--model", "gen_ssd"]) == 2
    assert "no MLflow tracking database" in capsys.readouterr().err
