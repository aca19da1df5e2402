"""The trajectory store at scale: commit time as the home grows, a commit's peak memory, and the
viewer's and the report's queries over the finished home.

    .venv/bin/python benchmarks/store_at_scale.py                      # 20k trajectories x 16 candidates
    .venv/bin/python benchmarks/store_at_scale.py --trajectories 1000000 --batch 1024   # 1M (~16M candidates)
    .venv/bin/python benchmarks/store_at_scale.py --trajectories 10000000 --batch 4096 --no-baseline

The home is synthetic, written through the real `write_batch`: each problem one trajectory of
`--steps` steps of `--k` candidates (short texts, random PPLs), `--batch` problems per commit, and
`Store.compact` run every `--compact-every` commits (as a compactor beside the writers would).
The baseline is the store before Parquet batches: the same rows into the DuckDB file's tables, each
commit deleting its keys first (`DELETE ... WHERE list_contains`), rows inserted from a DataFrame
(faster than the old executemany, so the baseline is flattered); `--no-baseline` skips it.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

from gen_ssd_dagster.core.types import Candidate, Step, Trajectory
from gen_ssd_dagster.store import Home, Store
from gen_ssd_dagster.store.schema import DDL
from gen_ssd_dagster.store.trajectories import WorkKey, candidate_ppl_histogram, partition_summary, write_batch

KEY = WorkKey(dataset="bench", method="gen_ssd", teacher_version="t1", student_version="s1", config_hash="h1")


def batch(start: int, n: int, steps: int, k: int, rng: random.Random) -> tuple[list[str], list[Trajectory]]:
    pids = [f"p{i:08d}" for i in range(start, start + n)]
    trajs = []
    for pid in pids:
        step_list = [Step([Candidate(text=f"step {s} candidate {c} of {pid}", teacher_tokens=12, student_tokens=12,
                                     nll=1.0, ppl=rng.lognormvariate(1.0, 0.5), passed=True) for c in range(k)], 0)
                     for s in range(steps)]
        trajs.append(Trajectory(dataset="bench", problem_id=pid, method="gen_ssd", sample_index=0, question="q",
                                gold="4", text=f"solution of {pid}\n#### 4", end_reason="finished", teacher_tokens=99,
                                student_tokens=50, ppl=2.0, predicted="4", correct=True, selected=True,
                                steps=step_list))
    return pids, trajs


def old_commit(path: Path, pids: list[str], trajs: list[Trajectory]) -> None:
    """The DuckDB-file commit this store replaced: delete the batch's keys, insert, one transaction."""
    keys = [KEY.trajectory_key(t.problem_id, t.sample_index) for t in trajs]
    traj = pd.DataFrame({"trajectory_key": keys, "dataset": "bench", "problem_id": pids, "method": "gen_ssd",
                         "method_version": KEY.method_version, "sample_index": 0, "teacher_version": "t1",
                         "student_version": "s1", "config_hash": "h1", "end_reason": "finished",
                         "selected": True, "text": [t.text for t in trajs]})
    cand = pd.DataFrame([(key, s, c, cand.text, cand.ppl, c == 0) for key, t in zip(keys, trajs)
                         for s, step in enumerate(t.steps) for c, cand in enumerate(step.candidates)],
                        columns=["trajectory_key", "step", "candidate_index", "text", "ppl", "chosen"])
    con = duckdb.connect(str(path))
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM candidates WHERE list_contains(?, trajectory_key)", [keys])
        con.execute("DELETE FROM trajectories WHERE list_contains(?, trajectory_key)", [keys])
        con.execute(f"INSERT INTO trajectories BY NAME SELECT * FROM traj")
        con.execute(f"INSERT INTO candidates BY NAME SELECT * FROM cand")
        con.execute("COMMIT")
    finally:
        con.close()


def fill(args, commit) -> list[float]:
    """Commit every batch; return each commit's seconds."""
    rng, times = random.Random(0), []
    for b, start in enumerate(range(0, args.trajectories, args.batch)):
        pids, trajs = batch(start, min(args.batch, args.trajectories - start), args.steps, args.k, rng)
        t0 = time.perf_counter()
        commit(b, pids, trajs)
        times.append(time.perf_counter() - t0)
    return times


def ends(times: list[float], n: int = 5) -> tuple[float, float]:
    """Median commit seconds of the first and of the last `n` commits (one commit is noisy here)."""
    return statistics.median(times[:n]), statistics.median(times[-n:])


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory(args, home: Path) -> tuple[float, float]:
    """(MiB, MiB): a fresh process's peak RSS before one commit of `--batch` problems (imports and the
    batch's Python objects built) and after it, into an empty home of its own."""
    code = (f"import random, resource, sys; sys.argv = ['x']; from benchmarks.store_at_scale import *\n"
            f"pids, trajs = batch(10**9, {args.batch}, {args.steps}, {args.k}, random.Random(1))\n"
            f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"write_batch(Store({str(home / 'gen_ssd.duckdb')!r}), KEY, pids, trajs, {{}})\n"
            f"print(before / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = out.stdout.strip().splitlines()[-1].split()
    return float(before), float(after)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--k", type=int, default=4, help="candidates per step")
    p.add_argument("--batch", type=int, default=256, help="problems per commit")
    p.add_argument("--compact-every", type=int, default=64, help="commits between compactions (0: never)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--dir", default=None, help="where to build the homes (default: a temporary folder)")
    args = p.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="store_at_scale_"))
    home = Home(root / "parquet").make()
    store = Store(home.db_path)
    store.init()
    n_cand = args.trajectories * args.steps * args.k
    print(f"home {root}: {args.trajectories} trajectories x {args.steps * args.k} candidates = {n_cand} candidates,"
          f" {args.batch} problems per commit")

    def commit(b, pids, trajs):
        write_batch(store, KEY, pids, trajs, {})
        if args.compact_every and (b + 1) % args.compact_every == 0:
            t0 = time.perf_counter()
            store.compact(min_batches=args.compact_every)
            compactions.append(time.perf_counter() - t0)

    compactions: list[float] = []
    t0 = time.perf_counter()
    times = fill(args, commit)
    first, last = ends(times)
    print(f"parquet batches: built in {time.perf_counter() - t0:.1f} s; commit first {first * 1000:.1f} ms,"
          f" last {last * 1000:.1f} ms, last/first {last / first:.2f}x (goal <= 1.5x); {len(compactions)}"
          f" compactions, median {statistics.median(compactions) if compactions else 0:.2f} s")
    before, after = peak_memory(args, root / "peak")
    print(f"peak RSS of a process committing {args.batch} problems: {before:.0f} MiB before the commit,"
          f" {after:.0f} MiB after (+{after - before:.0f})")

    from gen_ssd_dagster.viewer.queries import Filters, Reader

    reader = Reader(home)
    view = timed(lambda: reader.page(Filters()))
    summary = timed(lambda: partition_summary(store, KEY))
    hist = timed(lambda: candidate_ppl_histogram(store, KEY))
    assert partition_summary(store, KEY)["trajectories"] == args.trajectories
    print(f"viewer list page (count + first page): {view * 1000:.0f} ms (goal < 1 s)")
    print(f"report aggregate partition_summary: {summary * 1000:.0f} ms; PPL histogram in SQL: {hist * 1000:.0f} ms")

    if not args.no_baseline:
        old = root / "old.duckdb"
        con = duckdb.connect(str(old))
        con.execute(DDL)
        con.close()
        t0 = time.perf_counter()
        old_times = fill(args, lambda b, pids, trajs: old_commit(old, pids, trajs))
        ofirst, olast = ends(old_times)
        print(f"baseline DuckDB file: built in {time.perf_counter() - t0:.1f} s; commit first {ofirst * 1000:.1f} ms,"
              f" last {olast * 1000:.1f} ms, last/first {olast / ofirst:.2f}x")
        print(f"ratios new/old: first commit {first / ofirst:.2f}x, last commit {last / olast:.2f}x")


if __name__ == "__main__":
    main()
