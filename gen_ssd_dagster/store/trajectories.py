"""Writing and reading trajectories, their candidates and the problems they came from."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from ..core.method.versions import FIRST_VERSION, method_version
from ..core.types import Problem, Trajectory
from . import compaction, segments
from .db import Store, upsert_rows
from .schema import TRAJECTORY_TABLES


@dataclass(frozen=True)
class WorkKey:
    """Everything that determines a stored trajectory, apart from its problem and sample index."""

    dataset: str
    method: str
    teacher_version: str
    student_version: str
    config_hash: str
    # The version of the method's code (core/method/versions.py); empty = the current one.
    method_version: str = field(default="", repr=False)
    # Not where rows are stored but which of them are the partition's data: the problems a
    # teacher-token budget took (core/experiments/budget.py); None = every problem under the key.
    budget_problems: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.method_version:
            object.__setattr__(self, "method_version", method_version(self.method))
        if self.budget_problems is not None:  # read back from metadata as a list
            object.__setattr__(self, "budget_problems", tuple(self.budget_problems))

    def version_suffix(self) -> str:
        """What the method version adds to a hashed identity: nothing for the first version, so
        work stored before versions were recorded keeps its trajectory keys and data versions."""
        return "" if self.method_version == FIRST_VERSION else f"|method_version={self.method_version}"

    def trajectory_key(self, problem_id: str, sample_index: int) -> str:
        parts = [self.dataset, problem_id, self.method, str(sample_index), self.teacher_version,
                 self.student_version, self.config_hash]
        return hashlib.sha256(("\x1f".join(parts) + self.version_suffix()).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- problems

def write_problems(store: Store, problems: Iterable[Problem], side: str, run_id: str | None = None) -> int:
    """Upsert problems of one dataset side; returns how many rows were written."""
    rows = [(p.dataset, side, p.problem_id, i, p.question, p.gold, p.solution, run_id)
            for i, p in enumerate(problems)]
    with store.transaction() as con:
        upsert_rows(con, "problems", ["dataset", "side", "problem_id", "position", "question", "gold", "solution",
                                      "dagster_run_id"], rows, key=3)
    return len(rows)


def read_problems(store: Store, dataset: str, side: str, limit: int | None = None, offset: int = 0) -> list[Problem]:
    """Problems of one dataset side in source order, skipping the first `offset`."""
    from ..core.errors import ConfigError

    for name, value in (("max_problems", limit), ("offset", offset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    sql = ("SELECT dataset, problem_id, question, gold, solution FROM problems"
           " WHERE dataset = ? AND side = ? ORDER BY position, problem_id")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    sql += f" OFFSET {int(offset)}"
    return [Problem(*row) for row in store.query(sql, [dataset, side])]


# ---------------------------------------------------------------- trajectories

def done_problem_ids(store: Store, key: WorkKey) -> set[str]:
    """Problems already finished under this exact key (their work is reused, not redone)."""
    where, params = _where(key)
    return {r[0] for r in store.trajectory_query(f"SELECT problem_id FROM problem_runs WHERE {where}", params)}


def write_batch(store: Store, key: WorkKey, problem_ids: list[str], trajectories: list[Trajectory],
                config: dict, run_id: str | None = None) -> int:
    """Commit one batch of finished problems as one Parquet batch (segments.py): all of it lands, or
    none of it, with no lock taken. A problem already committed under this key by another writer is
    stored again but read as the first commit's (the first commit wins)."""
    traj_rows, cand_rows = [], []
    counts = dict.fromkeys(problem_ids, 0)
    for t in trajectories:
        tkey = key.trajectory_key(t.problem_id, t.sample_index)
        counts[t.problem_id] = counts.get(t.problem_id, 0) + 1
        traj_rows.append((
            tkey, key.dataset, t.problem_id, key.method, key.method_version, t.sample_index, key.teacher_version,
            key.student_version, key.config_hash, json.dumps(config, sort_keys=True), run_id,
            t.end_reason, t.teacher_tokens, t.student_tokens, t.ppl, t.predicted, t.correct,
            bool(t.selected), len(t.steps), t.question, t.gold, t.text))
        for s, step in enumerate(t.steps):
            for c, cand in enumerate(step.candidates):
                cand_rows.append((tkey, s, c, cand.text, cand.ppl, cand.nll, cand.teacher_tokens,
                                  cand.student_tokens, len(cand.text), cand.passed, step.chosen == c,
                                  cand.ends_solution))
    work_rows = [(key.dataset, pid, key.method, key.method_version, key.teacher_version, key.student_version,
                  key.config_hash, n, run_id) for pid, n in counts.items()]
    with batch_tables() as con:
        _insert(con, "trajectories", _TRAJECTORY_COLUMNS, traj_rows)
        _insert(con, "candidates", _CANDIDATE_COLUMNS, cand_rows)
        _insert(con, "problem_runs", _RUN_COLUMNS, work_rows)
        commit_tables(con, store)
    compaction.start_if_due(store.segments)  # in a process of its own: this writer goes on
    return len(traj_rows)


def commit_tables(con: duckdb.DuckDBPyConnection, store: Store) -> str:
    """Commit what `batch_tables`' connection holds as one batch, with each row's problem key and
    commit id; returns the commit id."""
    commit_id = segments.new_commit_id()
    segments.commit(con, store.segments, {
        t: f"SELECT *, {'' if t == 'candidates' else segments.PROBLEM_KEY_SQL + ' AS problem_key, '}"
           f"'{commit_id}' AS commit_id FROM {t}" for t in segments.TABLES}, commit_id)
    return commit_id


_TRAJECTORY_COLUMNS = ("trajectory_key, dataset, problem_id, method, method_version, sample_index, teacher_version,"
                       " student_version, config_hash, config, dagster_run_id, end_reason, teacher_tokens,"
                       " student_tokens, ppl, predicted, correct, selected, n_steps, question, gold, text")
_CANDIDATE_COLUMNS = ("trajectory_key, step, candidate_index, text, ppl, nll, teacher_tokens, student_tokens, chars,"
                      " passed, chosen, ends_solution")
_RUN_COLUMNS = ("dataset, problem_id, method, method_version, teacher_version, student_version, config_hash,"
                " n_trajectories, dagster_run_id")


@contextmanager
def batch_tables() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the trajectory tables, their constraints included: a batch is
    checked there (NOT NULL, one row per key) before any of it is written."""
    con = duckdb.connect()
    try:
        for ddl in TRAJECTORY_TABLES.values():
            con.execute(ddl)
        yield con
    finally:
        con.close()


def _insert(con: duckdb.DuckDBPyConnection, table: str, columns: str, rows: list[tuple]) -> None:
    if rows:
        # object columns keep None as NULL (a float column would turn a missing integer into NaN)
        frame = pd.DataFrame(rows, columns=[c.strip() for c in columns.split(",")], dtype=object)
        con.register("_rows", frame)
        con.execute(f"INSERT INTO {table} ({columns}) SELECT * FROM _rows")
        con.unregister("_rows")


def _where(key: WorkKey, alias: str = "") -> tuple[str, list]:
    a = f"{alias}." if alias else ""
    return (f"{a}dataset = ? AND {a}method = ? AND {a}teacher_version = ? AND {a}student_version = ?"
            f" AND {a}config_hash = ? AND {a}method_version = ?",
            [key.dataset, key.method, key.teacher_version, key.student_version, key.config_hash, key.method_version])


def data_where(key: WorkKey, alias: str = "") -> tuple[str, list]:
    """`_where`, narrowed to the key's `budget_problems` when a budget chose them: the partition's data,
    where `_where` is the work stored (reused whatever the budget)."""
    where, params = _where(key, alias)
    if key.budget_problems is None:
        return where, params
    return f"{where} AND list_contains(?, {alias + '.' if alias else ''}problem_id)", [*params, list(key.budget_problems)]


def partition_summary(store: Store, key: WorkKey) -> dict:
    """The numbers a trajectory asset reports about everything stored under its key (its
    `budget_problems` only, when a budget chose them)."""
    where, params = data_where(key)
    with store.trajectory_reader() as con:
        return _summary(con, where, params, *data_where(key, "t"))


def _summary(con, where: str, params: list, cwhere: str, cparams: list) -> dict:
    row = con.execute(
        "SELECT count(*), count(DISTINCT problem_id),"
        " count(*) FILTER (end_reason = 'finished'), count(*) FILTER (end_reason = 'pruned'),"
        " count(*) FILTER (end_reason = 'length_cap'), count(*) FILTER (selected),"
        " count(*) FILTER (correct), coalesce(sum(teacher_tokens), 0), avg(student_tokens), avg(ppl),"
        f" count(*) - count(DISTINCT (problem_id, sample_index)) FROM trajectories WHERE {where}", params).fetchone()
    cand = con.execute(
        "SELECT avg(c.ppl) FILTER (c.chosen), avg(c.ppl) FILTER (NOT c.chosen),"
        " count(*) FILTER (c.chosen), count(*) FILTER (c.passed), count(*)"
        f" FROM candidates c JOIN trajectories t USING (trajectory_key) WHERE {cwhere}", cparams).fetchone()
    n = row[0]
    if not cand[4]:  # the baselines have no steps: their candidates are whole samples
        cand = con.execute(
            "SELECT avg(ppl) FILTER (selected), avg(ppl) FILTER (NOT selected), 0,"
            f" count(*) FILTER (selected), count(*) FROM trajectories WHERE {where}", params).fetchone()
    return {
        "trajectories": n, "problems": row[1], "finished": row[2], "pruned": row[3], "length_capped": row[4],
        "selected": row[5], "correct": row[6], "teacher_tokens": int(row[7]),
        "mean_length_student_tokens": row[8], "mean_trajectory_ppl": row[9], "duplicates": row[10],
        "mean_chosen_ppl": cand[0], "mean_rejected_ppl": cand[1],
        "steps": cand[2], "candidates": cand[4],
        # Gen-SSD: the share of trajectories that ended with an answer rather than pruned.
        "acceptance_rate": (row[2] / n) if n else 0.0,
        "candidate_pass_rate": (cand[3] / cand[4]) if cand[4] else None,
    }


# Enough PPLs per side for a smooth plot; the rest of a large key is not loaded into Python.
PPL_SAMPLE = 20_000


def _ppl_rows(key: WorkKey) -> tuple[str, list]:
    """(value, chosen) rows of a key, as SQL: candidates' PPLs, or for the baselines (no steps) the
    whole samples' (selected or not)."""
    where, params = data_where(key, "t")
    return (f"SELECT c.ppl AS value, c.chosen AS chosen FROM candidates c JOIN trajectories t USING (trajectory_key)"
            f" WHERE {where} AND c.ppl IS NOT NULL", params)


def _baseline_rows(key: WorkKey) -> tuple[str, list]:
    where, params = data_where(key, "t")
    return f"SELECT t.ppl AS value, t.selected AS chosen FROM trajectories t WHERE {where} AND t.ppl IS NOT NULL", params


def candidate_ppls(store: Store, key: WorkKey, limit: int = PPL_SAMPLE) -> tuple[list[float], list[float]]:
    """Student PPLs of chosen and of rejected candidates under a key (for the plot), at most `limit`
    of each (a fixed random sample, drawn in SQL); for the baselines, which have no steps, of selected
    and of not-selected whole samples."""
    with store.trajectory_reader() as con:
        for sql, params in (_ppl_rows(key), _baseline_rows(key)):
            sides = [[v for (v,) in con.execute(
                f"SELECT value FROM (SELECT value FROM ({sql}) WHERE {side}) USING SAMPLE reservoir({int(limit)} ROWS)"
                " REPEATABLE (0) ORDER BY value", params).fetchall()] for side in ("chosen", "NOT chosen")]
            if sides[0] or sides[1]:
                return sides[0], sides[1]
    return [], []


def candidate_ppl_histogram(store: Store, key: WorkKey, bins: int = 40) -> dict:
    """The chosen and rejected PPL histograms of a key, counted in SQL over every candidate: equal
    bins on a log scale between the smallest and largest PPL. {"edges", "chosen", "rejected"}."""
    with store.trajectory_reader() as con:
        for sql, params in (_ppl_rows(key), _baseline_rows(key)):
            # the key's PPLs once into a temp table (one scan of the candidates), then two small passes
            con.execute(f"CREATE OR REPLACE TEMP TABLE _ppl AS SELECT value, chosen FROM ({sql}) WHERE value > 0", params)
            lo, hi = con.execute("SELECT min(value), max(value) FROM _ppl").fetchone()
            if lo is None:
                continue
            lo, hi = math.log(lo), math.log(hi) if hi > lo else math.log(lo) + 1.0
            width = (hi - lo) / bins
            counts = con.execute(
                "SELECT least(CAST(floor((ln(value) - ?) / ?) AS INTEGER), ?) AS b, count(*) FILTER (chosen),"
                " count(*) FILTER (NOT chosen) FROM _ppl GROUP BY b", [lo, width, bins - 1]).fetchall()
            chosen, rejected = [0] * bins, [0] * bins
            for b, c, r in counts:
                chosen[b], rejected[b] = c, r
            return {"edges": [math.exp(lo + i * width) for i in range(bins + 1)], "chosen": chosen, "rejected": rejected}
    return {"edges": [], "chosen": [], "rejected": []}


def sample_trajectory(store: Store, key: WorkKey) -> dict | None:
    """One selected (else any) trajectory under a key, for a readable example."""
    where, params = data_where(key)
    with store.trajectory_reader() as con:
        df = con.execute(
            f"SELECT problem_id, question, gold, text, end_reason, ppl, correct, selected FROM trajectories"
            f" WHERE {where} ORDER BY selected DESC, problem_id, sample_index LIMIT 1", params).df()
    return None if df.empty else df.iloc[0].to_dict()


def selected_examples(store: Store, key: WorkKey) -> list[tuple[str, str, str]]:
    """(problem_id, question, text) of the trajectories the method kept as training data (of the
    key's `budget_problems` only, when a budget chose them)."""
    where, params = data_where(key)
    return [tuple(r) for r in store.trajectory_query(
        f"SELECT problem_id, question, text FROM trajectories WHERE {where} AND selected"
        " ORDER BY problem_id, sample_index", params)]


def problem_costs(store: Store, key: WorkKey) -> dict[str, int]:
    """Teacher tokens spent on each problem finished under the key (rejected candidates and pruned
    paths included), for the teacher-token budget."""
    where, params = _where(key, "r")
    twhere, _ = _where(key, "t")
    return dict(store.query(
        f"SELECT r.problem_id, coalesce(sum(t.teacher_tokens), 0) FROM problem_runs r LEFT JOIN trajectories t"
        f" ON t.problem_id = r.problem_id AND {twhere} WHERE {where} GROUP BY r.problem_id", params + params))
