"""Two shards on two Celery workers at once against the same problems as one shard on one worker.

Real parts: Debian's redis-server on a free port, `dagster-celery worker` processes (pool solo, one
step at a time), `dagster asset materialize` on the `gen_ssd_dagster.scale_out` code location, as
tests/test_shards_celery.py runs them. Same seed, same problems, same tiny random Llama models
(tests/conftest.py `build_tiny_model`, a teacher larger than the tests' so that generation, not
Dagster's start-up, fills the step). Each arm gets a home of its own (stored work is keyed by
problem: a second arm in the same home would reuse the first's trajectories):

* baseline: GEN_SSD_SHARDS=1, one worker, the partition `demo`;
* two: GEN_SSD_SHARDS=2, two workers, `demo|0-of-2` and `demo|1-of-2` launched at the same moment.

The upstream assets (teacher, students, problems) are materialized first and not timed. Timed: the
trajectory runs, wall clock from launch until every run exited, and the steps alone (first
STEP_START to last STEP_SUCCESS in Dagster's event log). Printed: both, and baseline / two (the
speed-up; 2.0 would be linear). Both arms run once per torch-thread setting of --threads
("1": OMP_NUM_THREADS=1 in every worker; "default": unset, torch takes one thread per core, so two
workers on 2 cores ask for 4).

    .venv/bin/python benchmarks/two_shards_two_workers.py [--problems 48] [--threads 1 default]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import build_tiny_model, data_dir  # noqa: E402
from test_celery import REDIS, _env, _free_port, _stop  # noqa: E402
from test_shards_celery import run_at_once, run_upstream, start_workers, stop_workers  # noqa: E402


def start_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    import redis

    port = _free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}"
        except redis.ConnectionError:
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"redis-server on port {port} did not answer")


def run_config(args, teacher: Path, student: Path) -> dict:
    return {"ops": {"problems": {"config": {"max_problems": args.problems}},
                    "cold_start_student": {"config": {"max_problems": 0}},
                    "gen_ssd_trajectories": {"config": {
                        "max_problems": args.problems, "offset": 0, "batch_size": args.batch_size,
                        "num_candidates": 4, "chunk_tokens": 16, "suitability": "none",
                        "sampling": {"max_new_tokens": args.max_new_tokens, "temperature": 1.0}}}},
            "resources": {"models": {"config": {"teacher": str(teacher), "student": str(student)}},
                          "data": {"config": {"demo_train": args.problems, "demo_test": 4,
                                              "data_dir": str(data_dir())}}}}


def step_times(dagster_home: str, launched: float) -> dict:
    """Of the trajectory runs: first STEP_START to last STEP_SUCCESS ("steps_s"), and per run its
    worker, its own step seconds, the seconds from `launched` (time.time()) to RUN_START (the
    `dagster` process starting and loading the code location) and from RUN_START to STEP_START
    (the task queued, the job loaded in the worker)."""
    from dagster import DagsterEventType as E, DagsterInstance

    instance = DagsterInstance.from_config(dagster_home)
    runs = []
    for run in instance.get_runs():
        if "gen_ssd_trajectories" not in {k.to_user_string() for k in run.asset_selection or ()}:
            continue
        events = [e for e in instance.all_logs(run.run_id) if e.dagster_event]
        t = {e.dagster_event.event_type: e.timestamp for e in events}
        [node] = [e.dagster_event.engine_event_data.metadata["Celery worker"].value.split("@")[0] for e in events
                  if "in celery worker" in (e.dagster_event.message or "")]
        runs.append({"worker": node, "start": t[E.STEP_START], "end": t[E.STEP_SUCCESS],
                     "to_run_s": t[E.RUN_START] - launched, "to_step_s": t[E.STEP_START] - t[E.RUN_START]})
    return {"steps_s": max(r["end"] for r in runs) - min(r["start"] for r in runs),
            "each": [{"worker": r["worker"], "step_s": r["end"] - r["start"], "to_run_s": r["to_run_s"],
                      "to_step_s": r["to_step_s"]} for r in runs]}


def arm(args, tmp: Path, name: str, shards: int, threads: str, models: tuple[Path, Path]) -> dict:
    """One arm in a fresh home and Redis: `shards` shards on as many workers; its timings."""
    work = tmp / f"{name}-{threads}"
    work.mkdir()
    redis_proc, url = start_redis(work)
    env = {**_env(work / "home", url), "GEN_SSD_SHARDS": str(shards)}
    if threads == "default":
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = threads
    config = run_config(args, *models)
    names = [f"bench-{name}-{i}" for i in range(shards)]
    workers, logs = start_workers(env, work, names)
    try:
        traj = run_upstream(env, work, config)
        partitions = ["demo"] if shards == 1 else [f"demo|{s}-of-{shards}" for s in range(shards)]
        launched = time.time()
        wall = run_at_once(env, work, partitions, traj, timeout=1800)
    finally:
        stop_workers(workers, logs)
        _stop(redis_proc)
    times = step_times(env["DAGSTER_HOME"], launched)
    from gen_ssd_dagster.store import Home, Store

    [(problems, trajectories)] = Store(Home.resolve(work / "home").db_path).query(
        "SELECT count(DISTINCT problem_id), count(*) FROM trajectories WHERE method = 'gen_ssd'")
    return {"wall_s": wall, **times, "problems": problems, "trajectories": trajectories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=48, help="demo train problems (48: shards of 23 and 25)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", nargs="+", default=["1", "default"])
    args = parser.parse_args()
    from gen_ssd_dagster.core.data.sharding import shard_of

    sizes = [sum(shard_of(f"demo-train-{i:06d}", 2) == s for i in range(args.problems)) for s in range(2)]
    print(f"load before: {os.getloadavg()[0]:.2f} (2 cores); {args.problems} problems, shards of {sizes}, "
          f"K=4, chunk 16, {args.max_new_tokens} new tokens, batch {args.batch_size}", flush=True)
    with tempfile.TemporaryDirectory(prefix="two-shards-") as d:
        tmp = Path(d)
        models = (build_tiny_model(tmp / "teacher", vocab_size=300, hidden=256, layers=4, seed=0),
                  build_tiny_model(tmp / "student", vocab_size=270, hidden=64, layers=2, seed=1))
        results = {}
        for threads in args.threads:
            one = arm(args, tmp, "one", 1, threads, models)
            two = arm(args, tmp, "two", 2, threads, models)
            if (one["problems"], one["trajectories"]) != (two["problems"], two["trajectories"]):
                raise RuntimeError(f"the arms stored different work: {one} vs {two}")
            results[threads] = {"one": one, "two": two}
            if len({r["worker"] for r in two["each"]}) != 2:
                raise RuntimeError(f"the two shards did not run on two workers: {two['each']}")
            print(f"threads per worker {threads}: one shard on one worker {one['wall_s']:.1f}s wall, "
                  f"{one['steps_s']:.1f}s step | two shards on two workers {two['wall_s']:.1f}s wall, "
                  f"{two['steps_s']:.1f}s steps | speed-up wall {one['wall_s'] / two['wall_s']:.2f}x, "
                  f"steps {one['steps_s'] / two['steps_s']:.2f}x (load {os.getloadavg()[0]:.2f})", flush=True)
            for arm_name, r in (("one", one), ("two", two)):
                print("  " + arm_name + ": " + "; ".join(
                    f"{e['worker']}: launch to run start {e['to_run_s']:.1f}s, to step {e['to_step_s']:.1f}s, "
                    f"step {e['step_s']:.1f}s"
                    for e in r["each"]), flush=True)
        print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
