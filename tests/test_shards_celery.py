"""The shards of a dataset run in parallel on two real Celery workers (issue 29): Redis as broker,
two `dagster-celery worker` processes, the upstream assets in one run, then one run per shard
started at the same moment with `dagster asset materialize`, as a backfill launches them. What
must hold: each shard's step ran in a different worker (neither waited for the other to finish
the whole dataset), and the two shards stored every problem once. Skipped as test_celery.py is."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import data_dir
from test_celery import BIN, _env, _stop, redis_url  # noqa: F401  (redis_url: a fixture)

SHARDS = 2
UPSTREAM = "teacher,base_student,problems,cold_start_student"


def _materialize(env, cwd, select: str, partition: str, run_config: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "gen_ssd_dagster.scale_out", "--select", select,
         "--partition", partition, "--config-json", json.dumps(run_config)],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # Redis, two Celery workers and three Dagster runs over real (tiny) models
def test_two_celery_workers_run_the_shards_in_parallel(tmp_path, tiny_models, redis_url):  # noqa: F811
    from dagster import DagsterEventType, DagsterInstance

    from gen_ssd_dagster.core.data.sharding import shard_of
    from gen_ssd_dagster.store import Home, Store

    teacher, student = tiny_models
    home = tmp_path / "home"
    env = {**_env(home, redis_url), "GEN_SSD_SHARDS": str(SHARDS)}
    repo = Path(__file__).resolve().parents[1]
    workers, logs = [], []
    for name in ("shard-worker-a", "shard-worker-b"):
        logs.append(open(tmp_path / f"{name}.log", "w"))
        workers.append(subprocess.Popen(
            [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
             "-y", str(repo / "deploy" / "celery.yaml"), "-n", name, "--loglevel", "WARNING",
             "--", "--pool=solo", "--prefetch-multiplier=1"],
            env=env, cwd=tmp_path, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True))
    run_config = {
        "ops": {"problems": {"config": {"max_problems": 8}},
                "cold_start_student": {"config": {"max_problems": 0}},
                "gen_ssd_trajectories": {"config": {"max_problems": 6, "offset": 0, "batch_size": 2,
                                                    "num_candidates": 2, "chunk_tokens": 8, "suitability": "none",
                                                    "sampling": {"max_new_tokens": 16}}}},
        "resources": {"models": {"config": {"teacher": str(teacher), "student": str(student)}},
                      "data": {"config": {"demo_train": 8, "demo_test": 4, "data_dir": str(data_dir())}}},
    }
    try:
        upstream = _materialize(env, tmp_path, UPSTREAM, "demo", {**run_config, "ops": {
            k: v for k, v in run_config["ops"].items() if k != "gen_ssd_trajectories"}})
        out = upstream.communicate(timeout=300)[0]
        assert upstream.returncode == 0, out[-3000:]
        shard_config = {**run_config, "ops": {"gen_ssd_trajectories": run_config["ops"]["gen_ssd_trajectories"]}}
        started = time.time()
        runs = [_materialize(env, tmp_path, "gen_ssd_trajectories", f"demo|{s}-of-{SHARDS}", shard_config)
                for s in range(SHARDS)]
        outs = [r.communicate(timeout=400)[0] for r in runs]
        elapsed = time.time() - started
    finally:
        for w in workers:
            _stop(w)
        for f in logs:
            f.close()
    for r, o in zip(runs, outs):
        assert r.returncode == 0, o[-3000:]

    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    shard_runs = [r for r in instance.get_runs() if "|" in r.tags.get("dagster/partition", "")]
    assert sorted(r.tags["dagster/partition"] for r in shard_runs) == ["demo|0-of-2", "demo|1-of-2"]
    nodes, spans = {}, {}
    for run in shard_runs:
        events = [e for e in instance.all_logs(run.run_id) if e.dagster_event]
        [node] = [e.dagster_event.engine_event_data.metadata["Celery worker"].value for e in events
                  if e.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
                  and "in celery worker" in (e.dagster_event.message or "")]
        nodes[run.tags["dagster/partition"]] = node.split("@")[0]
        times = {e.dagster_event.event_type: e.timestamp for e in events
                 if e.dagster_event.event_type in (DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS)}
        spans[run.tags["dagster/partition"]] = (times[DagsterEventType.STEP_START], times[DagsterEventType.STEP_SUCCESS])
    assert sorted(nodes.values()) == ["shard-worker-a", "shard-worker-b"], nodes  # one shard per worker
    (a0, a1), (b0, b1) = spans.values()
    overlap = min(a1, b1) - max(a0, b0)
    assert overlap > 0, spans  # the two shard steps ran at the same time

    store = Store(Home.resolve(home).db_path)
    by_run = store.query("SELECT dagster_run_id, problem_id FROM problem_runs WHERE method = 'gen_ssd'")
    assert len(by_run) == 6 and len({p for _, p in by_run}) == 6  # every problem once
    shard_of_run = {r.run_id: int(r.tags["dagster/partition"].split("|")[1].split("-")[0]) for r in shard_runs}
    assert all(shard_of(p, SHARDS) == shard_of_run[run_id] for run_id, p in by_run)
    print(f"two shards on two Celery workers: {elapsed:.0f}s for both runs, steps overlapped {overlap:.0f}s "
          f"({nodes})")
