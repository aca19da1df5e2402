"""The `training_datasets/<method>` assets and the distilled student that learns from them, run
through Dagster on a real instance in a tmp home (docs/dataset-export.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DEMO_SIZES, data_dir  # memorizing_teacher, tiny_models: conftest fixtures
from gen_ssd_dagster.export import read_manifest
from gen_ssd_dagster.store import Home, Store

UPSTREAM = ["teacher", "base_student", "problems", "cold_start_student"]
SMALL = {"max_problems": 3, "offset": 0, "batch_size": 2, "num_candidates": 2, "chunk_tokens": 8,
         "suitability": "none", "sampling": {"max_new_tokens": 24, "keep": "finished"}}


def _run(home: Home, teacher, student, selection, ops: dict, **data):
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline

    result = run_pipeline(home, "demo", {"ops": ops},
                          {"models": ModelsResource(teacher=str(teacher), student=str(student)),
                           "data": DataResource(**data)}, log=lambda _: None, selection=selection)
    assert result.success
    return result


def _metadata(result, asset: str) -> dict:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset)
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}, \
        event.step_materialization_data.materialization.tags


def test_the_asset_writes_the_dataset_and_rewrites_nothing_when_nothing_is_new(tmp_path, tiny_models):
    """Random tiny models: the dataset may keep nothing (an empty `default`), every trajectory is in `all`."""
    from datasets import load_dataset

    home = Home.resolve(tmp_path / "home")
    ops = {"problems": {"config": {"max_problems": 6}}, "cold_start_student": {"config": {"max_problems": 0}},
           "gen_ssd_trajectories": {"config": SMALL}}
    data = {"demo_train": 12, "demo_test": 4, "data_dir": str(data_dir())}
    first = _run(home, *tiny_models, [*UPSTREAM, "gen_ssd_trajectories", "training_datasets/gen_ssd"], ops, **data)
    meta, _ = _metadata(first, "training_datasets/gen_ssd")
    path = Path(meta["path"])
    assert path.parent == home.root / "datasets" / "demo" and meta["digest"] == read_manifest(path)["digest"]
    store = Store(home.db_path)
    n, kept = store.query("SELECT count(*), count(*) FILTER (selected) FROM trajectories WHERE method = 'gen_ssd'")[0]
    assert (meta["trajectories"], meta["kept"]) == (n, kept) and n == 3
    assert load_dataset(str(path), "all", split="train", cache_dir=str(tmp_path / "cache")).num_rows == n
    if kept:
        assert load_dataset(str(path), split="train", cache_dir=str(tmp_path / "cache")).num_rows == kept
    else:  # `datasets` refuses an empty split ("corresponds to no data"): the file is there, empty
        import pyarrow.parquet as pq

        assert pq.read_table(path / "data").num_rows == 0 and "keeps no trajectory" in (path / "README.md").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in path.rglob("*")}

    again = _run(home, *tiny_models, ["gen_ssd_trajectories", "training_datasets/gen_ssd"], ops, **data)
    meta2, _ = _metadata(again, "training_datasets/gen_ssd")
    assert (meta2["digest"], meta2["rewritten"]) == (meta["digest"], False)
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == mtimes


@pytest.mark.slow
def test_the_distilled_student_learns_from_the_export_and_mlflow_records_it(tmp_path, tiny_models, memorizing_teacher,
                                                                           capsys):
    from mlflow import MlflowClient

    from gen_ssd_dagster import cli

    home = Home.resolve(tmp_path / "home")
    sampling = {"max_new_tokens": 128, "temperature": 0.3}
    ops = {"cold_start_student": {"config": {"max_problems": 0}},
           "gen_ssd_trajectories": {"config": {"batch_size": 4, "num_candidates": 2, "sampling": sampling,
                                               "max_problems": 4, "offset": 4, "suitability": "none"}},
           "distilled_students__gen_ssd": {"config": {"train": {"epochs": 1}}}}
    result = _run(home, memorizing_teacher, tiny_models[1],
                  [*UPSTREAM, "gen_ssd_trajectories", "training_datasets/gen_ssd", "distilled_students/gen_ssd"],
                  ops, **DEMO_SIZES)
    dataset, _ = _metadata(result, "training_datasets/gen_ssd")
    student, _ = _metadata(result, "distilled_students/gen_ssd")
    assert dataset["kept"] > 0 and student["trajectories"] == dataset["kept"]
    assert student["training_datasets"] == [{"path": dataset["path"], "digest": dataset["digest"],
                                             "rows": dataset["kept"]}]
    # every row DuckDB selected went into the folder and from there into the student
    assert Store(home.db_path).query("SELECT count(*) FROM trajectories WHERE method = 'gen_ssd' AND selected")[0][0] \
        == dataset["kept"]

    run = MlflowClient(home.mlflow_uri).get_run(student["mlflow_run_id"])
    [logged] = run.inputs.dataset_inputs
    assert logged.dataset.digest == dataset["digest"][:32] and dataset["path"] in logged.dataset.source
    assert cli.main(["--home", str(home.root), "lineage", "--model", "gen_ssd"]) == 0
    assert f"trained on         {dataset['path']}  (digest {dataset['digest']})" in capsys.readouterr().out
