"""The trajectory store at scale: a commit's time and peak memory in an empty and in a full home,
and the viewer's and the report's queries over the full home.

    .venv/bin/python benchmarks/store_at_scale.py                                   # 100k trajectories
    .venv/bin/python benchmarks/store_at_scale.py --trajectories 1000000            # 1M x 10 = 10M candidates

How the synthetic home is built: `--batch` problems per commit, each one trajectory of `--steps`
steps of `--k` candidates (short texts, log-normal PPLs, 10 datasets, 3 methods), rows made by SQL
from `range()` inside `batch_tables()` (the same in-memory tables, constraints and commit as
`write_batch`, without building Python Trajectory objects, which would take hours at 10M
candidates), and `Store.compact(--compact-every)` run whenever the tail reaches that many batches
(what the compactor a writer starts does). One problem in 200 is written twice, by a second commit
that loses (first commit wins), so de-duplication has work to do.

The timed commit is the real `write_batch` with Python Trajectory objects (`--commit-batch`
problems), five times into an empty home and five times into the full one; its peak RSS is measured
in a fresh process that commits into the full home and then computes what the trajectory asset
reports (partition_summary, the PPL sample). The viewer's list page is one request's queries
(page + facets); `gen-ssd report` is the command run in-process; the asset's aggregates too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GEN_SSD_COMPACT_AFTER", "0")  # this script compacts itself, in-process

from gen_ssd_dagster.core.types import Candidate, Step, Trajectory  # noqa: E402
from gen_ssd_dagster.store import Home, Store  # noqa: E402
from gen_ssd_dagster.store.trajectories import (WorkKey, batch_tables, candidate_ppl_histogram,  # noqa: E402
                                                candidate_ppls, commit_tables, partition_summary, write_batch)

KEY = WorkKey(dataset="d0", method="gen_ssd", teacher_version="t1", student_version="s1", config_hash="h1")
METHODS = ("gen_ssd", "standard_kd", "posthoc")


def synthetic_batch(store: Store, start: int, n: int, steps: int, k: int) -> None:
    """Problems start..start+n-1 as one commit, made in SQL; the 200th ones are rewritten later."""
    with batch_tables() as con:
        con.execute(
            "INSERT INTO trajectories (trajectory_key, dataset, problem_id, method, method_version, sample_index,"
            " teacher_version, student_version, config_hash, end_reason, teacher_tokens, student_tokens, ppl,"
            " correct, selected, n_steps, question, gold, text)"
            f" SELECT md5(i::VARCHAR), 'd' || (i % 10), 'p' || i, ['{METHODS[0]}', '{METHODS[1]}', '{METHODS[2]}'][i % 3 + 1],"
            f" '{KEY.method_version}', 0, 't1', 's1', 'h1', ['finished', 'pruned', 'length_cap'][i % 7 % 3 + 1],"
            f" 40 * {steps}, 30 * {steps}, exp(random() - 0.5) * 3, i % 2 = 0, true, {steps},"
            " 'question ' || i, '4', 'solution of problem ' || i || ' #### 4' FROM range(?, ?) r(i)", [start, start + n])
        con.execute(
            "INSERT INTO candidates (trajectory_key, step, candidate_index, text, ppl, nll, teacher_tokens,"
            " student_tokens, chars, passed, chosen, ends_solution)"
            " SELECT md5(i::VARCHAR), s, c, 'step ' || s || ' candidate ' || c, exp(random()) * 2, random(), 12, 12,"
            f" 20, true, c = 0, false FROM range(?, ?) r(i), range({steps}) s(s), range({k}) k(c)",
            [start, start + n])
        con.execute(
            "INSERT INTO problem_runs (dataset, problem_id, method, method_version, teacher_version,"
            " student_version, config_hash, n_trajectories) SELECT dataset, problem_id, method, method_version,"
            " teacher_version, student_version, config_hash, 1 FROM trajectories")
        commit_tables(con, store)


def python_batch(start: int, n: int, steps: int, k: int, rng: random.Random) -> tuple[list[str], list[Trajectory]]:
    pids = [f"x{i:09d}" for i in range(start, start + n)]
    trajs = [Trajectory(dataset="d0", problem_id=pid, method="gen_ssd", sample_index=0, question="q", gold="4",
                        text=f"solution of {pid}\n#### 4", end_reason="finished", teacher_tokens=99,
                        student_tokens=50, ppl=2.0, predicted="4", correct=True, selected=True,
                        steps=[Step([Candidate(text=f"step {s} candidate {c} of {pid}", teacher_tokens=12,
                                               student_tokens=12, nll=1.0, ppl=rng.lognormvariate(1.0, 0.5),
                                               passed=True) for c in range(k)], 0) for s in range(steps)])
             for pid in pids]
    return pids, trajs


def commit_times(store: Store, args, start: int, repeat: int = 5) -> list[float]:
    rng, times = random.Random(start), []
    for r in range(repeat):
        pids, trajs = python_batch(start + r * args.commit_batch, args.commit_batch, args.steps, args.k, rng)
        t0 = time.perf_counter()
        write_batch(store, KEY, pids, trajs, {})
        times.append(time.perf_counter() - t0)
    return times


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory(args, home: Path) -> float:
    """MiB: a fresh process's peak RSS committing `--commit-batch` problems into the full home and
    computing what the trajectory asset reports over it."""
    code = ("import random, resource, sys; sys.argv = ['x']; from benchmarks.store_at_scale import *\n"
            f"pids, trajs = python_batch(2 * 10**9, {args.commit_batch}, {args.steps}, {args.k}, random.Random(1))\n"
            f"store = Store({str(home / 'gen_ssd.duckdb')!r})\n"
            "write_batch(store, KEY, pids, trajs, {}); partition_summary(store, KEY); candidate_ppls(store, KEY)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])})
    return float(out.stdout.split()[-1])  # (after any progress bar DuckDB drew)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--k", type=int, default=2, help="candidates per step")
    p.add_argument("--batch", type=int, default=2048, help="problems per synthetic commit")
    p.add_argument("--commit-batch", type=int, default=256, help="problems per timed write_batch")
    p.add_argument("--compact-every", type=int, default=32, help="tail batches that start a compaction")
    p.add_argument("--dir", default=None, help="where to build the home (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="measure the home already built in --dir")
    args = p.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="store_at_scale_"))
    shutil.rmtree(root / "empty", ignore_errors=True)
    home = Home(root / "home").make()
    store = Store(home.db_path)
    store.init()
    print(f"load {os.getloadavg()[0]:.1f}; home {home.root}: {args.trajectories} trajectories x"
          f" {args.steps * args.k} candidates = {args.trajectories * args.steps * args.k} candidates,"
          f" {args.batch} problems per synthetic commit")
    empty = Store(Home(root / "empty").make().db_path)
    first = commit_times(empty, args, 0)

    t0, compactions = time.perf_counter(), []
    for b, start in enumerate(range(0, 0 if args.reuse else args.trajectories, args.batch)):
        synthetic_batch(store, start, min(args.batch, args.trajectories - start), args.steps, args.k)
        if b % 200 == 199:  # a second, losing commit of problems already stored
            synthetic_batch(store, start, 1, args.steps, args.k)
        if (b + 1) % args.compact_every == 0:
            t1 = time.perf_counter()
            store.compact(args.compact_every)
            compactions.append(time.perf_counter() - t1)
    built = time.perf_counter() - t0
    from gen_ssd_dagster.store.snapshot import take

    snap = take(store.segments)
    print(f"built in {built:.0f} s: {len(snap.manifest.segments)} segments (levels"
          f" {sorted(s['level'] for s in snap.manifest.segments)}), {len(snap.tail)} fresh batches;"
          f" {len(compactions)} compactions, median {statistics.median(compactions or [0]):.2f} s,"
          f" max {max(compactions or [0]):.2f} s")
    last = commit_times(store, args, 10**9)
    f, la = statistics.median(first), statistics.median(last)
    print(f"write_batch of {args.commit_batch} problems: empty home {f * 1000:.0f} ms, full home {la * 1000:.0f} ms,"
          f" last/first {la / f:.2f}x (goal <= 1.5x); medians of 5")
    print(f"peak RSS of a process committing {args.commit_batch} problems into the full home and computing its"
          f" summary: {peak_memory(args, home.root):.0f} MiB (goal <= 2048)")

    from gen_ssd_dagster.cli import main as cli
    from gen_ssd_dagster.viewer.queries import Filters, Reader

    reader = Reader(home)

    def list_page(filters: Filters):
        with reader.session():
            reader.page(filters)
            reader.facets()

    def report():
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(["--home", str(home.root), "report"]) == 0

    total = partition_summary(store, KEY)["trajectories"]
    n = {"list page (newest first)": timed(lambda: list_page(Filters())),
         "list page (dataset d3, by PPL, page 3)": timed(lambda: list_page(Filters(dataset="d3", sort="ppl", page=3))),
         "gen-ssd report": timed(report),
         "partition_summary (the asset's report)": timed(lambda: partition_summary(store, KEY)),
         "candidate_ppl_histogram": timed(lambda: candidate_ppl_histogram(store, KEY)),
         "candidate_ppls (20k sample)": timed(lambda: candidate_ppls(store, KEY))}
    for name, s in n.items():
        print(f"{name}: {s * 1000:.0f} ms")
    print(f"(partition {KEY.dataset}/gen_ssd holds {total} trajectories; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
