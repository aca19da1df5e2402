"""The trajectory tables as immutable Parquet batches that many writers add to without a lock.

Beside the DuckDB file `<db>` lies `<db>.trajectories/`:

    batches/<commit_id>/{problem_runs,trajectories,candidates}.parquet   one committed batch
    tmp/                                                                 batches being written
    manifest/, compacted/                                                the compacted layer (snapshot.py)

A commit writes its files into `tmp/<commit_id>/`, fsyncs them and renames the folder into
`batches/`: a rename is atomic, so a reader sees a whole batch or none of it, and a writer killed
before the rename leaves only a folder under `tmp/` that no reader looks at. No lock is taken:
writers on other machines need only a shared folder, and readers never wait.

`commit_id` (`<time_ns>-<random>`) is in every row. Two writers that race on one problem under one
work key both land; readers keep the problem's rows of the smallest commit_id (the first commit
wins, the same answer on every reader), through the views `snapshot.create_views` makes.
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

PROBLEM_KEY_SQL = "md5(concat_ws(chr(31), " + ", ".join(RUN_KEY) + "))"


def root_of(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".trajectories")


def new_commit_id() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sql_path(path: Path) -> str:
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
    try:
        for table, select in selects.items():
            if not con.execute(f"SELECT EXISTS ({select})").fetchone()[0]:
                continue
            path = tmp / f"{table}.parquet"
            con.execute(f"COPY ({select}) TO {sql_path(path)} (FORMAT parquet, COMPRESSION zstd)")
            fsync(path)
        for name, text in (notes or {}).items():
            (tmp / name).write_text(text)
            fsync(tmp / name)
        fsync(tmp)
    except BaseException:
        # a commit that fails (a full disk) takes its files with it; only a killed one leaves them
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, final)  # the commit point
    fsync(final.parent)
    return commit_id


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


