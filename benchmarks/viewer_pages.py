"""How fast the trajectory viewer's pages are on a large home.

    python benchmarks/viewer_pages.py [--trajectories 100000] [--home DIR]

Fills a fresh DuckDB home (the package's own schema) with N Gen-SSD-shaped trajectories, a
quarter of them pruned, each with 8 steps of 4 candidates, in a few SQL statements. Then it asks
the viewer's app (in-process, through Starlette's test client) for pages a person opens, and
times each against a baseline measured in the same run: the bare DuckDB query of the same list
page on one open connection. The ratio says what the viewer adds on top of the database.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from gen_ssd_dagster.store import Home, Store

STEPS, K = 8, 4


def fill(home: Home, n: int) -> None:
    Store(home.db_path).init()
    con = duckdb.connect(str(home.db_path))
    con.execute(f"""
        INSERT INTO trajectories (trajectory_key, dataset, problem_id, method, method_version, sample_index,
            teacher_version, student_version, config_hash, config, end_reason, teacher_tokens, student_tokens, ppl,
            predicted, correct, selected, n_steps, question, gold, text)
        SELECT printf('%024d', i), CASE WHEN i % 3 = 0 THEN 'gsm8k' ELSE 'demo' END, 'p' || (i // 3),
            CASE i % 3 WHEN 0 THEN 'gen_ssd' WHEN 1 THEN 'standard_kd' ELSE 'posthoc' END, '1', 0, 'teacher-v1',
            'student-v1', 'cfg' || (i % 7), '{{}}', CASE WHEN i % 4 = 0 THEN 'pruned' ELSE 'finished' END,
            64 + i % 200, 40 + i % 150, 1.5 + (i % 997) / 50.0, (i % 10)::VARCHAR, i % 4 = 1, i % 4 <> 0,
            {STEPS}, 'Question ' || i, '7', repeat('Step: 3 + 4 = 7. ', 8)
        FROM range({n}) t(i)""")
    con.execute(f"""
        INSERT INTO candidates (trajectory_key, step, candidate_index, text, ppl, nll, teacher_tokens,
            student_tokens, chars, passed, chosen, ends_solution)
        SELECT printf('%024d', i), s, c, 'Step: 3 + 4 = 7.', 1.0 + ((i * 31 + s * 7 + c) % 400) / 20.0, 1.0, 16,
            12, 16, c < 3, c = 0 AND NOT (i % 4 = 0 AND s = {STEPS - 1}), s = {STEPS - 1}
        FROM range({n}) t(i), range({STEPS}) u(s), range({K}) v(c)""")
    con.close()


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=100_000)
    parser.add_argument("--home", help="where to build the home (default: a temporary directory)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from starlette.testclient import TestClient

    from gen_ssd_dagster.viewer import create_app

    root = Path(args.home or tempfile.mkdtemp(prefix="viewer_bench_"))
    home = Home.resolve(root)
    start = time.perf_counter()
    fill(home, args.trajectories)
    print(f"home {root}: {args.trajectories} trajectories, {args.trajectories * STEPS * K} candidates,"
          f" filled in {time.perf_counter() - start:.1f}s")

    con = duckdb.connect(str(home.db_path), read_only=True)
    baseline = timed(lambda: con.execute(
        "SELECT * EXCLUDE (question, text, config) FROM trajectories ORDER BY ppl DESC, trajectory_key"
        " LIMIT 50 OFFSET 0").fetchall(), args.repeats)
    con.close()
    # What every page pays first: the viewer opens the file per request (a connection held open
    # would keep every writer out of it), under the home's file lock.
    store = Store(home.db_path)

    def connect_only():
        with store.reader():
            pass
    connect = timed(connect_only, args.repeats)
    client = TestClient(create_app(home))
    key = "%024d" % (args.trajectories // 2)
    middle = args.trajectories // 50 // 2
    pages = {
        "list, first page": "/",
        f"list, sorted by PPL, page {middle}": f"/?sort=ppl&page={middle}",
        "list, pruned gen_ssd on gsm8k": "/?dataset=gsm8k&method=gen_ssd&end_reason=pruned",
        "one trajectory (8 steps x 4)": f"/t/{key}",
        "distributions plot (all)": "/distributions.png",
    }
    print(f"baseline: the list page's bare DuckDB query, one open connection: {baseline * 1000:.1f} ms")
    print(f"opening and closing the file read-only (every page does it once): {connect * 1000:.1f} ms"
          f" ({connect / baseline:.1f} x baseline)\n")
    print(f"{'page':34} {'median ms':>10} {'x baseline':>11}")
    for name, path in pages.items():
        def get(path=path):
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
        seconds = timed(get, args.repeats)
        print(f"{name:34} {seconds * 1000:10.1f} {seconds / baseline:11.1f}")


if __name__ == "__main__":
    main()
