"""Short-lived DuckDB connections that many processes can share.

The trajectory tables (problem_runs, trajectories, candidates) are not in the file: they are
Parquet batches beside it (`segments.py`), written without any lock and read through temp views
of the same names that every connection here gets, so queries read them as tables. What follows
is about the other tables (problems, evaluation outputs and scores, experiments).

DuckDB lets one process hold a database file for writing. Partitions materialized in parallel
(Dagster's multiprocess executor, or two `gen-ssd` commands) each run in their own process, so no
connection is ever kept open: every read or write opens the file, does its work in one
transaction and closes it, under an inter-process file lock (`<db>.lock`). A lock held by a
process outside this package (a DuckDB shell, say) is waited out with retry and backoff rather
than surfaced as an error.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from filelock import FileLock

from . import segments, snapshot
from .schema import DDL, KEY_CHANGES, MIGRATIONS, SCHEMA_VERSION


class StoreBusyError(RuntimeError):
    """The database stayed locked by another process for longer than the configured wait."""


def _names_trajectory_table(sql: str) -> bool:
    """Whether a query may read a trajectory table (their views cost a look at the batches: a query
    of the scores does without them)."""
    return re.search(r"\b(problem_runs|trajectories|candidates)\b", sql, re.IGNORECASE) is not None


def _is_lock_error(exc: Exception) -> bool:
    msg = str(exc).lower()
    return "lock" in msg or "conflicting" in msg


class Store:
    """The DuckDB file of one home. Every method opens and closes its own connection."""

    def __init__(self, path: str | Path, timeout_s: float = 600.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._lock = FileLock(str(self.path) + ".lock", timeout=timeout_s)
        self._ready = False

    @property
    def segments(self) -> Path:
        """The folder of the trajectory tables' Parquet batches."""
        return segments.root_of(self.path)

    @contextmanager
    def connect(self, read_only: bool = False, views: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held for the duration of the block, under the file lock; with the trajectory
        tables' views unless `views` is False."""
        if not self._ready:
            self._ready = True
            self.init()
        with self._held(read_only, views) as con:
            yield con

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection that never creates or migrates the file (for a viewer)."""
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        with self._held(read_only=True) as con:
            yield con

    @contextmanager
    def _held(self, read_only: bool, views: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            con = self._open(read_only)
            try:
                if views:
                    self._views(con, con.execute("SELECT current_database()").fetchone()[0])
                yield con
            finally:
                con.close()

    @contextmanager
    def trajectory_reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the trajectory tables alone that takes no lock and never waits for a
        writer: an in-memory DuckDB over the Parquet batches. A home whose old DuckDB tables are not
        migrated yet is read from the file as it is, under the lock."""
        with self.trajectory_streams(1) as (con,):
            yield con

    @contextmanager
    def trajectory_streams(self, n: int) -> Iterator[list[duckdb.DuckDBPyConnection]]:
        """`n` lock-free connections over one and the same snapshot, for queries streamed side by
        side (an export reads trajectories and their candidates in step). Temp views are per
        connection, so each gets its own, made from the one snapshot."""
        if self.path.is_file() and not (self.segments / segments.MIGRATED_MARKER).exists():
            with self.reader() as con:  # an old home, read as it is: nobody writes it before migrating
                cursors = [con] + [con.cursor() for _ in range(n - 1)]
                db = con.execute("SELECT current_database()").fetchone()[0]
                for cursor in cursors[1:]:
                    self._views(cursor, db)
                yield cursors
            return
        con = duckdb.connect()
        try:
            snap = snapshot.take(self.segments)
            cursors = [con] + [con.cursor() for _ in range(n - 1)]
            for cursor in cursors:
                snapshot.create_views(cursor, snap, None)
            yield cursors
        finally:
            con.close()

    def _views(self, con: duckdb.DuckDBPyConnection, legacy_db: str | None = None) -> None:
        """The trajectory tables' views over a snapshot of the folder (`snapshot.py`), and over an
        old home's DuckDB tables (database `legacy_db`) while they are not migrated."""
        snap = snapshot.take(self.segments)
        legacy = None
        if legacy_db and not (self.segments / segments.MIGRATED_MARKER).exists() and not (
                segments.LEGACY_COMMIT in {b.name for b in snap.tail} or segments.LEGACY_COMMIT in snap.manifest.consumed):
            legacy = {t: segments.legacy_select(con, legacy_db, t) for t in segments.TABLES}
        snapshot.create_views(con, snap, legacy)

    def trajectory_query(self, sql: str, params: list | None = None) -> list[tuple]:
        """`query` over the trajectory tables only, without the lock (`trajectory_reader`)."""
        with self.trajectory_reader() as con:
            return con.execute(sql, params or []).fetchall()

    def compact(self, min_batches: int = 1) -> str | None:
        """Fold the trajectory tables' fresh batches into the compacted layer (`compaction.py`);
        None when another compactor is at work or there was nothing to do."""
        from . import compaction

        return compaction.compact(self.segments, min_batches)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: everything in the block lands, or nothing does."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def init(self) -> None:
        """Create the file and tables if they are missing (idempotent)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            con = self._open(read_only=False)
            try:
                con.execute(DDL)
                for statement in MIGRATIONS:
                    con.execute(statement)
                for (table, column), statements in KEY_CHANGES.items():
                    if not con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = ?"
                                       " AND column_name = ?", [table, column]).fetchone()[0]:
                        con.execute("BEGIN TRANSACTION")
                        for statement in statements:
                            con.execute(statement)
                        con.execute("COMMIT")
                if not con.execute("SELECT count(*) FROM schema_info").fetchone()[0]:
                    con.execute("INSERT INTO schema_info VALUES (?)", [SCHEMA_VERSION])
                self._migrate_trajectories(con)
            finally:
                con.close()
        self._ready = True

    def _migrate_trajectories(self, con: duckdb.DuckDBPyConnection) -> None:
        """Move an old home's trajectory rows out of the file into one batch (LEGACY_COMMIT, which
        sorts before every commit), then empty the tables. Redone from the start after a crash:
        the batch is written once, and readers skip the tables as soon as it exists."""
        marker = self.segments / segments.MIGRATED_MARKER
        if marker.exists():
            return
        db = con.execute("SELECT current_database()").fetchone()[0]
        selects = {t: segments.legacy_select(con, db, t) for t in segments.TABLES}
        segments.commit(con, self.segments, selects, segments.LEGACY_COMMIT)
        con.execute("BEGIN TRANSACTION")
        for table in reversed(segments.TABLES):
            con.execute(f"DELETE FROM {table}")
        con.execute("COMMIT")
        marker.touch()

    def query_df(self, sql: str, params: list | None = None):
        """Run one read query and return a pandas DataFrame."""
        with self.connect(read_only=True, views=_names_trajectory_table(sql)) as con:
            return con.execute(sql, params or []).df()

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with self.connect(read_only=True, views=_names_trajectory_table(sql)) as con:
            return con.execute(sql, params or []).fetchall()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusyError(
                        f"{self.path} stayed locked by another process for {self.timeout_s:.0f}s: {exc}"
                    ) from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)


def upsert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: list[tuple],
                key: int) -> None:
    """`INSERT OR REPLACE` of `rows` (tuples in `columns` order) as one statement over a DataFrame:
    `executemany` ran a statement per row, 3 ms each (12 s for 4,000 demo problems). The first
    `key` columns are the table's primary key; a key given twice keeps its last row, as row-by-row
    upserts did."""
    import pandas as pd

    last = {row[:key]: row for row in rows}
    if not last:
        return
    frame = pd.DataFrame(list(last.values()), columns=columns, dtype=object)
    names = ", ".join(columns)
    con.register("rows_to_upsert", frame)
    try:
        con.execute(f"INSERT OR REPLACE INTO {table} ({names}) SELECT {names} FROM rows_to_upsert")
    finally:
        con.unregister("rows_to_upsert")
