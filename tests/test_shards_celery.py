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
PROBLEMS = 48
UPSTREAM = "teacher,base_student,problems,cold_start_student"


WORKERS = ("shard-worker-a", "shard-worker-b")


def start_workers(env: dict, cwd: Path, names) -> tuple[list[subprocess.Popen], list]:
    """One `dagster-celery worker` per name, each in a session (process group) of its own, running one
    step at a time; returns the processes and their open log files (cwd/<name>.log)."""
    repo = Path(__file__).resolve().parents[1]
    workers, logs = [], []
    for name in names:
        logs.append(open(cwd / f"{name}.log", "w"))
        workers.append(subprocess.Popen(
            [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
             "-y", str(repo / "deploy" / "celery.yaml"), "-n", name, "--loglevel", "WARNING",
             "--", "--pool=solo", "--prefetch-multiplier=1"],
            env=env, cwd=cwd, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True))
    return workers, logs


def materialize(env, cwd, select: str, partition: str, run_config: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "gen_ssd_dagster.scale_out", "--select", select,
         "--partition", partition, "--config-json", json.dumps(run_config)],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_upstream(env: dict, cwd: Path, run_config: dict) -> dict:
    """Materialize the upstream assets of `demo` (with `run_config` but its trajectories' config);
    returns the run config of the trajectories alone, for the shard runs."""
    ops = run_config["ops"]
    upstream = materialize(env, cwd, UPSTREAM, "demo",
                           {**run_config, "ops": {k: v for k, v in ops.items() if k != "gen_ssd_trajectories"}})
    out = upstream.communicate(timeout=900)[0]
    if upstream.returncode:
        raise AssertionError(f"the upstream run failed:\n{out[-3000:]}")
    return {**run_config, "ops": {"gen_ssd_trajectories": ops["gen_ssd_trajectories"]}}


def run_at_once(env: dict, cwd: Path, partitions: list[str], shard_config: dict, timeout: float = 400) -> float:
    """The trajectories of `partitions`, one run each, all launched at the same moment (as a
    backfill launches them); seconds until every run exited. A failed run raises with its output."""
    started = time.time()
    runs = [materialize(env, cwd, "gen_ssd_trajectories", p, shard_config) for p in partitions]
    outs = [r.communicate(timeout=timeout)[0] for r in runs]
    elapsed = time.time() - started
    for p, r, o in zip(partitions, runs, outs):
        if r.returncode:
            raise AssertionError(f"the run of {p} failed:\n{o[-3000:]}")
    return elapsed


def stop_workers(workers: list[subprocess.Popen], logs: list) -> None:
    for w in workers:
        _stop(w)
    for f in logs:
        f.close()


@pytest.mark.slow  # Redis, two Celery workers and three Dagster runs over real (tiny) models
def test_two_celery_workers_run_the_shards_in_parallel(tmp_path, tiny_models, redis_url):  # noqa: F811
    from dagster import DagsterEventType, DagsterInstance

    from gen_ssd_dagster.core.data.sharding import shard_of
    from gen_ssd_dagster.store import Home, Store

    teacher, student = tiny_models
    home = tmp_path / "home"
    env = {**_env(home, redis_url), "GEN_SSD_SHARDS": str(SHARDS)}
    workers, logs = start_workers(env, tmp_path, WORKERS)
    # Steps of several seconds each: the two `dagster asset materialize` processes start seconds
    # apart on a loaded machine (imports), and steps of ~1 s could then miss each other.
    run_config = {
        "ops": {"problems": {"config": {"max_problems": PROBLEMS}},
                "cold_start_student": {"config": {"max_problems": 0}},
                "gen_ssd_trajectories": {"config": {"max_problems": PROBLEMS, "offset": 0, "batch_size": 2,
                                                    "num_candidates": 2, "chunk_tokens": 8, "suitability": "none",
                                                    "sampling": {"max_new_tokens": 64}}}},
        "resources": {"models": {"config": {"teacher": str(teacher), "student": str(student)}},
                      "data": {"config": {"demo_train": PROBLEMS, "demo_test": 4, "data_dir": str(data_dir())}}},
    }
    try:
        shard_config = run_upstream(env, tmp_path, run_config)
        elapsed = run_at_once(env, tmp_path, [f"demo|{s}-of-{SHARDS}" for s in range(SHARDS)], shard_config)
    finally:
        stop_workers(workers, logs)

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
    assert len(by_run) == PROBLEMS and len({p for _, p in by_run}) == PROBLEMS  # every problem once
    shard_of_run = {r.run_id: int(r.tags["dagster/partition"].split("|")[1].split("-")[0]) for r in shard_runs}
    assert all(shard_of(p, SHARDS) == shard_of_run[run_id] for run_id, p in by_run)
    print(f"two shards on two Celery workers: {elapsed:.0f}s for both runs, steps of {a1 - a0:.0f}s and "
          f"{b1 - b0:.0f}s overlapped {overlap:.0f}s ({nodes})")
