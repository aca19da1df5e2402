"""Shards inside a dataset (GEN_SSD_SHARDS, docs/scale-out.md): each problem's shard is a stable
function of its id, the shards of a dataset together make exactly the unsharded run, re-sharding
reuses every stored trajectory, and the distilled student waits for (and reads) every shard.

The sharded runs are real Dagster runs on a persistent instance in a tmp home, in processes of their
own (tests/shard_runs.py), since the shard count is read when the definitions load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import data_dir

HERE = Path(__file__).resolve().parent
UPSTREAM = ["teacher", "base_student", "problems", "cold_start_student"]
RUN_CONFIG = {"ops": {
    "problems": {"config": {"max_problems": 12}},
    "cold_start_student": {"config": {"max_problems": 0}},  # skipped: the tiny models are random
    "gen_ssd_trajectories": {"config": {"max_problems": 8, "offset": 0, "batch_size": 2, "num_candidates": 2,
                                        "chunk_tokens": 8, "suitability": "none",
                                        "sampling": {"max_new_tokens": 24, "temperature": 1.0}}},
    "distilled_students__gen_ssd": {"config": {"partitions": ["demo"], "train": {"epochs": 1}}},
}}


# ---------------------------------------------------------------- the shard of a problem

def test_shard_of_is_stable_and_covers_every_problem():
    from gen_ssd_dagster.core.data.sharding import shard_of, shard_problems
    from gen_ssd_dagster.core.types import Problem

    ids = [f"demo-train-{i}" for i in range(200)]
    here = [shard_of(i, 8) for i in ids]
    # another process with another str hash seed puts every problem in the same shard
    code = "import json,sys; from gen_ssd_dagster.core.data.sharding import shard_of; " \
           "print(json.dumps([shard_of(i, 8) for i in json.loads(sys.argv[1])]))"
    there = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert json.loads(there) == here
    assert set(here) == set(range(8))  # 200 ids spread over all 8 shards
    problems = [Problem("demo", i, "q", "1") for i in ids]
    shards = [shard_problems(problems, s, 8) for s in range(8)]
    assert sorted(p.problem_id for s in shards for p in s) == sorted(ids)  # a partition: no loss, no overlap
    # a problem's shard depends on its id alone, not on which others are present or their order
    assert shard_problems(list(reversed(problems[:50])), 3, 8) == list(reversed(
        [p for p in problems[:50] if shard_of(p.problem_id, 8) == 3]))
    assert all(shard_of(i, 1) == 0 for i in ids)


@pytest.mark.parametrize("bad", ["0", "-2", "four", "2.5"])
def test_a_bad_shard_count_is_named(bad, monkeypatch):
    from gen_ssd_dagster.core.errors import ConfigError
    from gen_ssd_dagster.core.data.sharding import shard_count

    monkeypatch.setenv("GEN_SSD_SHARDS", bad)
    with pytest.raises(ConfigError, match="GEN_SSD_SHARDS"):
        shard_count()


def test_partition_keys():
    from gen_ssd_dagster.defs.partitions import (DATASETS, dataset_partitions, dataset_shard,
                                                 trajectory_partitions)

    assert trajectory_partitions(1) is DATASETS  # one shard: the readable dataset keys of before
    keys = trajectory_partitions(4).get_partition_keys()
    assert [k for k in keys if k.startswith("demo|")] == dataset_partitions("demo", 4) == \
        ["demo|0-of-4", "demo|1-of-4", "demo|2-of-4", "demo|3-of-4"]
    assert [dataset_shard(k) for k in keys[:2]] == [("demo", 0, 4), ("demo", 1, 4)]
    assert dataset_shard("demo|3-of-8") == ("demo", 3, 8) and dataset_shard("gsm8k") == ("gsm8k", 0, 1)


# ---------------------------------------------------------------- real runs

def _runs(shards: int, home: Path, tiny_models, runs: list[tuple[str, list[str]]]) -> list[dict]:
    spec = {"home": str(home), "teacher": str(tiny_models[0]), "student": str(tiny_models[1]),
            "data_dir": str(data_dir()), "run_config": RUN_CONFIG,
            "runs": [{"partition": p, "assets": a} for p, a in runs]}
    env = {**os.environ, "GEN_SSD_SHARDS": str(shards), "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run([sys.executable, str(HERE / "shard_runs.py"), json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _trajectories(home: Path) -> list[tuple]:
    from gen_ssd_dagster.store import Home, Store

    return Store(Home.resolve(home).db_path).query(
        "SELECT problem_id, sample_index, trajectory_key, text, round(ppl, 4), end_reason, selected, created_at"
        " FROM trajectories WHERE method = 'gen_ssd' ORDER BY problem_id, sample_index")


def test_shards_make_the_unsharded_run_and_resharding_reuses_it(tmp_path, tiny_models):
    from gen_ssd_dagster.core.data.sharding import shard_of

    traj = ["gen_ssd_trajectories"]
    student = ["distilled_students/gen_ssd"]
    # the unsharded run, in a home of its own
    whole = _runs(1, tmp_path / "one", tiny_models, [("demo", UPSTREAM + traj)])
    assert whole[0]["success"], whole[0]["log"]
    unsharded = _trajectories(tmp_path / "one")
    ids = {r[0] for r in unsharded}
    assert len(ids) == 8

    # four shards: three of them, the student (refused: a shard is missing), the fourth, the student
    home = tmp_path / "four"
    first = [(f"demo|{s}-of-4", traj) for s in range(3)]
    runs = _runs(4, home, tiny_models, [("demo", UPSTREAM), *first, ("demo", student),
                                        ("demo|3-of-4", traj), ("demo", student)])
    for r in runs[1:4] + runs[5:6]:
        assert r["success"], r["log"]
        md = r["metadata"]["gen_ssd_trajectories"]
        shard = int(r["partition"].split("|")[1].split("-")[0])
        expected = sum(shard_of(i, 4) == shard for i in ids)
        assert md["asked_problems"] == md["new_problems"] == expected and md["shard"] == f"{shard} of 4"
    refused = runs[4]
    assert not refused["success"]
    assert any("gen_ssd_trajectories[demo|3-of-4]" in line for line in refused["log"]), refused["log"]
    # with every shard in, the student gets past its inputs: it learns from the whole dataset's key
    # (or, the tiny random teacher having kept nothing, says so of the dataset, not of a shard)
    last = runs[6]
    assert last["success"] or any("selected no trajectory in ['demo']" in line for line in last["log"]), last["log"]
    if last["success"]:
        selected = sum(r[6] for r in _trajectories(home))
        assert last["metadata"]["distilled_students/gen_ssd"]["trajectories"] == selected
        assert last["metadata"]["distilled_students/gen_ssd"]["shards"] == 4

    sharded = _trajectories(home)
    # problem for problem: same keys, texts, ends, choices; PPLs up to float noise (other batch neighbours)
    assert [r[:4] + r[5:7] for r in sharded] == [r[:4] + r[5:7] for r in unsharded]
    assert [r[4] for r in sharded] == pytest.approx([r[4] for r in unsharded], rel=1e-4)

    # re-sharding 4 -> 8: every shard reuses what is stored, nothing is generated or rewritten
    eight = _runs(8, home, tiny_models, [(f"demo|{s}-of-8", traj) for s in range(8)])
    assert all(r["success"] for r in eight), [r["log"] for r in eight if not r["success"]]
    new = [r["metadata"]["gen_ssd_trajectories"]["new_problems"] for r in eight]
    reused = [r["metadata"]["gen_ssd_trajectories"]["reused_problems"] for r in eight]
    assert new == [0] * 8 and sum(reused) == 8
    assert _trajectories(home) == sharded

    # lineage and the viewer name the shards of today's count
    from gen_ssd_dagster.store import Home, lineage
    from gen_ssd_dagster.viewer.queries import Reader

    info = lineage.dataset_lineage(Home.resolve(home), "demo", shards=8)
    [work] = [t for t in info["trajectories"] if t["method"] == "gen_ssd"]
    assert work["problems_by_shard"] == [sum(shard_of(i, 8) == s for i in ids) for s in range(8)]
    assert "problems per shard (of 8): 0-of-8:" in lineage.format_dataset(info)
    os.environ["GEN_SSD_SHARDS"] = "8"
    try:
        with Reader(Home.resolve(home)).session() as reader:
            t = reader.trajectory(sharded[0][2])
    finally:
        del os.environ["GEN_SSD_SHARDS"]
    assert t["shard"] == f"shard {shard_of(sharded[0][0], 8)}-of-8"


def test_gen_ssd_pipeline_says_how_to_run_a_sharded_selection():
    import dagster as dg

    from gen_ssd_dagster.core.errors import ConfigError
    from gen_ssd_dagster.defs.partitions import DATASETS, trajectory_partitions
    from gen_ssd_dagster.pipeline import _one_partitioning

    @dg.asset(partitions_def=DATASETS)
    def upstream():
        return 1

    @dg.asset(partitions_def=trajectory_partitions(4), deps=[upstream])
    def shard():
        return 1

    graph = dg.Definitions(assets=[upstream, shard]).resolve_asset_graph()
    with pytest.raises(ConfigError, match="GEN_SSD_SHARDS"):
        _one_partitioning(graph, graph.get_all_asset_keys())
    _one_partitioning(graph, [dg.AssetKey("shard")])  # one partitioning: fine
