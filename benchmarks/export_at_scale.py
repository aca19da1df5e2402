"""How fast, and in how much memory, a large work key exports as a Hugging Face dataset (export/).

    python benchmarks/export_at_scale.py [--kept 100000] [--not-kept 50000] [--steps 6] [--home DIR]

The synthetic home: the package's own DuckDB schema, filled in a few SQL statements with one
Gen-SSD work key of `kept + not_kept` trajectories (one per problem; the not-kept ones pruned),
each a ~300-character solution of `steps` lines "Step s: a + b = c" plus a "#### N" line, and
`steps` steps of 2 candidates each (the chosen line and a rejected one).

Each measurement runs in a fresh child process that reports its own peak RSS (ru_maxrss), so one
does not inherit another's memory. Printed, against a baseline measured in the same run (DuckDB's
own COPY of the kept rows' question and text to one Parquet file, the least any export can do):
  - the first export (both configurations, card, plot, digest): seconds, peak RSS, ratio to COPY;
  - the export again with nothing new (the fingerprint check): seconds;
  - reading the kept rows back as the trainer does (`training_pairs`, streamed): seconds, peak RSS;
  - sizes: the kept rows' Parquet against their raw UTF-8 text, and the `all` configuration's.
Goals (issue 30): the first export <= 60 s and <= 1 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from gen_ssd_dagster.store import Home, Store
from gen_ssd_dagster.store.trajectories import WorkKey

KEY = WorkKey("synth", "gen_ssd", "teacher@sha256:bench", "cold@sha256:bench", "cfgbench")
LINE = "format('Step {}: {} + {} = {}', s, (i * 31 + s) % 97, (i * 17 + s) % 89, (i * 31 + s) % 97 + (i * 17 + s) % 89)"


def fill(home: Home, kept: int, not_kept: int, steps: int) -> None:
    """The rows go into the DuckDB tables, where an old home kept them; the store's next `init`
    moves them into its Parquet batches (the old-home migration, store/db.py)."""
    store = Store(home.db_path)
    store.init()
    shutil.rmtree(store.segments)  # no batch and no "migrated" marker: the home reads as an old one
    n = kept + not_kept
    con = duckdb.connect(str(home.db_path))
    config = json.dumps({"method": "gen_ssd", "chunk_tokens": 16, "num_candidates": 2, "sampling": {"keep": "correct"}})
    con.execute(f"""
        INSERT INTO trajectories (trajectory_key, dataset, problem_id, method, method_version, sample_index,
            teacher_version, student_version, config_hash, config, end_reason, teacher_tokens, student_tokens, ppl,
            predicted, correct, selected, n_steps, question, gold, text)
        SELECT printf('%024d', i), ?, printf('synth-%07d', i), ?, ?, 0, ?, ?, ?, ?,
            CASE WHEN i < {kept} THEN 'finished' ELSE 'pruned' END, 60 + i % 200, 45 + i % 150, 1.5 + (i % 997) / 50.0,
            CASE WHEN i < {kept} THEN (i % 1000)::VARCHAR END, i < {kept}, i < {kept}, {steps},
            format('Mia has {{}} apples and buys {{}} more, then gives away {{}}. How many apples does she have now?',
                   i % 50, i % 30, i % 7),
            (i % 1000)::VARCHAR,
            array_to_string(list_transform(range({steps}), lambda s: {LINE}), chr(10)) || chr(10) || '#### ' || (i % 1000)
        FROM range({n}) t(i)""", [KEY.dataset, KEY.method, KEY.method_version, KEY.teacher_version,
                                   KEY.student_version, KEY.config_hash, config])
    con.execute(f"""
        INSERT INTO candidates (trajectory_key, step, candidate_index, text, ppl, nll, teacher_tokens, student_tokens,
            chars, passed, chosen, ends_solution)
        SELECT printf('%024d', i), s, c, CASE WHEN c = 0 THEN {LINE} ELSE 'Step ' || s || ': maybe ' || (i % 13) END,
            1.2 + c * 4 + (i % 31) / 10.0, 0.2 + c, 10, 8, 20, c = 0, c = 0, s = {steps} - 1 AND c = 0
        FROM range({n}) t(i), range({steps}) u(s), range(2) v(c)""")
    con.close()
    store.init()


CHILD = """
import json, resource, sys, time
from pathlib import Path
from gen_ssd_dagster.store import Home
from gen_ssd_dagster.store.trajectories import WorkKey
home, what, key = Home(Path(sys.argv[1])), sys.argv[2], WorkKey(**json.loads(sys.argv[3]))
start = time.perf_counter()
out = {}
if what == "copy":  # from the store's Parquet batches, as the export reads them
    from gen_ssd_dagster.store import Store
    with Store(home.db_path).trajectory_reader() as con:
        con.execute(f"COPY (SELECT question, text FROM trajectories WHERE config_hash = '{key.config_hash}' AND selected"
                    f" ORDER BY problem_id) TO '{home.root / 'copy.parquet'}' (FORMAT parquet, COMPRESSION zstd)")
elif what == "export":
    from gen_ssd_dagster.export import export_dataset
    r = export_dataset(home, key)
    out = {"rewritten": r.rewritten, "kept": r.counts["kept"], "text_bytes": r.text_bytes,
           "parquet_bytes": r.parquet_bytes, "path": str(r.path),
           "all_bytes": sum(f["bytes"] for n, f in r.files.items() if n.startswith("all/"))}
elif what == "read":
    from gen_ssd_dagster.export import dataset_dir
    from gen_ssd_dagster.export.reading import training_pairs
    out = {"rows": sum(1 for _ in training_pairs(dataset_dir(home, key)))}
out.update(seconds=time.perf_counter() - start, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def child(home: Home, what: str) -> dict:
    from dataclasses import asdict

    done = subprocess.run([sys.executable, "-c", CHILD, str(home.root), what, json.dumps(asdict(KEY))],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=int, default=100_000)
    parser.add_argument("--not-kept", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--home", help="where to build the synthetic home (default: a temp dir)")
    args = parser.parse_args()
    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="export-bench-")).make()
    start = time.perf_counter()
    fill(home, args.kept, args.not_kept, args.steps)
    print(f"synthetic home {home.root}: {args.kept} kept + {args.not_kept} pruned trajectories, {args.steps} steps x 2 "
          f"candidates each, built in {time.perf_counter() - start:.1f} s")
    copy = child(home, "copy")
    first = child(home, "export")
    again = child(home, "export")
    read = child(home, "read")
    assert first["rewritten"] and not again["rewritten"] and first["kept"] == read["rows"] == args.kept
    print(f"baseline: DuckDB COPY of the kept (question, text) to Parquet   {copy['seconds']:6.1f} s  "
          f"{copy['peak_rss_mb']:6.0f} MB peak RSS")
    print(f"export (default + all, card, plot, digest)                 {first['seconds']:6.1f} s  "
          f"{first['peak_rss_mb']:6.0f} MB peak RSS  ({first['seconds'] / copy['seconds']:.1f}x the COPY; "
          f"goals: <= 60 s, <= 1024 MB)")
    print(f"export again, nothing new                                  {again['seconds']:6.1f} s  "
          f"{again['peak_rss_mb']:6.0f} MB peak RSS")
    print(f"training_pairs: the kept rows streamed back                {read['seconds']:6.1f} s  "
          f"{read['peak_rss_mb']:6.0f} MB peak RSS")
    print(f"kept rows: Parquet {first['parquet_bytes'] / 1e6:.1f} MB vs raw text {first['text_bytes'] / 1e6:.1f} MB "
          f"({first['parquet_bytes'] / first['text_bytes']:.2f}x); `all` (with candidates) {first['all_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
