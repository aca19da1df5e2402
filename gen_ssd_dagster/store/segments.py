"""The trajectory tables as immutable Parquet batches that many writers add to without a lock.

Beside the DuckDB file `<db>` lies `<db>.trajectories/`:

    batches/<commit_id>/{problem_runs,trajectories,candidates}.parquet   one committed batch
    batches/m-<commit_id>/... + merged                                   a compaction of many batches
    tmp/                                                                 batches being written

A commit writes its files into `tmp/<commit_id>/`, fsyncs them and renames the folder into
`batches/`: a rename is atomic, so a reader sees a whole batch or none of it, and a writer killed
before the rename leaves only a folder under `tmp/` that no reader looks at. No lock is taken:
writers on other machines need only a shared folder, and readers never wait.

`commit_id` (`<time_ns>-<random>`) is in every row. Two writers that race on one problem under one
work key both land; readers keep the problem's rows of the smallest commit_id (the first commit
wins, the same answer on every reader), through the views `create_views` makes.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

TABLES = ("problem_runs", "trajectories", "candidates")
RUN_KEY = ("dataset", "problem_id", "method", "method_version", "teacher_version", "student_version", "config_hash")
# The rows an old home kept in its DuckDB tables, moved into one batch that sorts before any commit.
LEGACY_COMMIT = "0" * 20 + "-legacy"
MIGRATED_MARKER = "legacy-migrated"
# Compacted batches' sources are deleted only this long after the compaction, so a reader that
# listed them just before can finish reading them.
DELETE_AFTER_S = 600.0

PROBLEM_KEY_SQL = "md5(concat_ws(chr(31), " + ", ".join(RUN_KEY) + "))"


def root_of(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".trajectories")


def new_commit_id() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def commit(con, root: Path, selects: dict[str, str], commit_id: str | None = None,
           notes: dict[str, str] | None = None) -> str | None:
    """Write each table's SELECT (run on `con`) as one batch, atomically; returns its commit id.

    A table whose SELECT gives no row gets no file. With a fixed `commit_id` that is already
    committed nothing is written (a migration redone after a crash). `notes` are small text files
    that land with the batch."""
    commit_id = commit_id or new_commit_id()
    final = root / "batches" / commit_id
    if final.exists():
        return None
    tmp = root / "tmp" / f"{commit_id}.{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    (root / "batches").mkdir(exist_ok=True)
    for table, select in selects.items():
        if not con.execute(f"SELECT EXISTS ({select})").fetchone()[0]:
            continue
        path = tmp / f"{table}.parquet"
        con.execute(f"COPY ({select}) TO {_sql_path(path)} (FORMAT parquet, COMPRESSION zstd)")
        _fsync(path)
    for name, text in (notes or {}).items():
        (tmp / name).write_text(text)
        _fsync(tmp / name)
    _fsync(tmp)
    os.rename(tmp, final)  # the commit point
    _fsync(final.parent)
    return commit_id


def live_batches(root: Path) -> list[Path]:
    """The committed batches a reader reads: every folder under batches/ but those a compaction replaced."""
    folder = root / "batches"
    if not folder.is_dir():
        return []
    names = sorted(os.listdir(folder))
    replaced = set()
    for name in names:
        if name.startswith("m-"):
            try:
                replaced.update((folder / name / "merged").read_text().split())
            except FileNotFoundError:
                pass
    return [folder / n for n in names if n not in replaced]


def _files(batches: list[Path], table: str) -> list[Path]:
    return [p for p in (b / f"{table}.parquet" for b in batches) if p.exists()]


def _source(files: list[Path], empty_sql: str) -> str:
    if not files:
        return empty_sql
    return "SELECT * FROM read_parquet([" + ", ".join(_sql_path(p) for p in files) + "])"


def legacy_select(con, db: str, table: str) -> str | None:
    """The rows an un-migrated home keeps in its DuckDB table, shaped like a batch's (None without the table)."""
    from .schema import table_columns

    columns = table_columns(table)
    have = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? AND table_schema = 'main'"
        " AND table_name = ?", [db, table]).fetchall()}
    if not have:
        return None
    from ..core.method.versions import FIRST_VERSION

    exprs = [c if c in have else (f"'{FIRST_VERSION}'" if c == "method_version" else "NULL") + f" AS {c}"
             for c in columns]
    extra = f", {PROBLEM_KEY_SQL} AS problem_key" if table != "candidates" else ""
    return f"SELECT {', '.join(exprs)}{extra}, '{LEGACY_COMMIT}' AS commit_id FROM \"{db}\".main.{table}"


def create_views(con, root: Path, legacy_db: str | None = None) -> None:
    """Temp views `problem_runs`, `trajectories` and `candidates` over the live batches (and the old
    DuckDB tables of database `legacy_db`, while they are not migrated), deduplicated: per work key
    and problem, the rows of the first commit."""
    from .schema import empty_select

    batches = live_batches(root)
    use_legacy = legacy_db is not None and not (root / "batches" / LEGACY_COMMIT).exists()
    for table in TABLES:
        sql = _source(_files(batches, table), empty_select(table))
        legacy = legacy_select(con, legacy_db, table) if use_legacy else None
        if legacy:
            sql = f"{sql} UNION ALL BY NAME {legacy}"
        con.execute(f"CREATE OR REPLACE TEMP VIEW _{table}_all AS {sql}")
    con.execute("CREATE OR REPLACE TEMP VIEW _problem_runs_won AS SELECT * FROM _problem_runs_all"
                " QUALIFY row_number() OVER (PARTITION BY problem_key ORDER BY commit_id) = 1")
    con.execute("CREATE OR REPLACE TEMP VIEW problem_runs AS"
                " SELECT * EXCLUDE (problem_key, commit_id) FROM _problem_runs_won")
    # a trajectory without any problem_runs row (possible only in an old home) is kept
    con.execute("CREATE OR REPLACE TEMP VIEW _trajectories_won AS SELECT t.* FROM _trajectories_all t"
                " LEFT JOIN (SELECT problem_key, commit_id AS won FROM _problem_runs_won) w USING (problem_key)"
                " WHERE w.won IS NULL OR w.won = t.commit_id")
    con.execute("CREATE OR REPLACE TEMP VIEW trajectories AS"
                " SELECT * EXCLUDE (problem_key, commit_id) FROM _trajectories_won")
    con.execute("CREATE OR REPLACE TEMP VIEW candidates AS SELECT c.* EXCLUDE (commit_id) FROM _candidates_all c"
                " SEMI JOIN _trajectories_won t ON c.trajectory_key = t.trajectory_key AND c.commit_id = t.commit_id")


def compact(con, root: Path, min_batches: int = 64) -> str | None:
    """Merge the live batches into one (when there are at least `min_batches`), so a reader opens a
    few files rather than one per commit. Rows are copied as they are (their commit ids with them),
    so the first-commit-wins answer does not change. One compactor at a time (an atomic mkdir claims
    it); writers and readers go on meanwhile. Returns the merged batch's name, or None."""
    claim = root / "compacting"
    try:
        claim.mkdir(parents=True)
    except FileExistsError:
        if time.time() - claim.stat().st_mtime < 3600:
            return None  # another compactor is at work (or died within the hour)
    try:
        _delete_replaced(root)
        batches = live_batches(root)
        if len(batches) < min_batches:
            return None
        merged = []
        for b in batches:
            merged.append(b.name)
            if b.name.startswith("m-"):
                merged += (b / "merged").read_text().split()
        commit_id = "m-" + new_commit_id()
        selects = {t: _source(_files(batches, t), "") for t in TABLES if _files(batches, t)}
        return commit(con, root, selects, commit_id, notes={"merged": "\n".join(merged) + "\n"})
    finally:
        shutil.rmtree(claim, ignore_errors=True)


def _delete_replaced(root: Path) -> None:
    """Delete the sources of compactions older than DELETE_AFTER_S, and stale writes under tmp/."""
    folder = root / "batches"
    now = time.time()
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        m = folder / name
        if name.startswith("m-") and (m / "merged").exists() and now - (m / "merged").stat().st_mtime > DELETE_AFTER_S:
            for source in (m / "merged").read_text().split():
                shutil.rmtree(folder / source, ignore_errors=True)
    for stale in (root / "tmp").glob("*") if (root / "tmp").is_dir() else []:
        if now - stale.stat().st_mtime > 24 * 3600:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
