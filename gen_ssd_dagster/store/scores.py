"""Evaluation scores: one row per (student, benchmark) measurement, with the grader's version,
and their 95% intervals from the graded outputs behind them (`core.statistics`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigError
from ..core.statistics import Interval, paired_difference, pass_at_1
from .db import Store


@dataclass(frozen=True)
class Score:
    student: str
    model_version: str
    benchmark: str
    n: int
    n_correct: int
    accuracy: float
    grader_version: str
    eval_config_hash: str
    model_path: str | None = None
    dagster_run_id: str | None = None
    mlflow_run_id: str | None = None


def write_scores(store: Store, scores: list[Score]) -> None:
    with store.transaction() as con:
        con.executemany(
            "INSERT INTO evaluation_scores (student, model_version, benchmark, n, n_correct, accuracy,"
            " grader_version, eval_config_hash, model_path, dagster_run_id, mlflow_run_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.student, s.model_version, s.benchmark, s.n, s.n_correct, s.accuracy, s.grader_version,
              s.eval_config_hash, s.model_path, s.dagster_run_id, s.mlflow_run_id) for s in scores])


def cached_score(store: Store, model_version: str, benchmark: str, grader_version: str,
                 eval_config_hash: str) -> tuple[int, int] | None:
    """(n, n_correct) of an earlier evaluation of the very same model, benchmark, grader and settings."""
    rows = store.query(
        "SELECT n, n_correct FROM evaluation_scores WHERE model_version = ? AND benchmark = ?"
        " AND grader_version = ? AND eval_config_hash = ? ORDER BY created_at DESC LIMIT 1",
        [model_version, benchmark, grader_version, eval_config_hash])
    return tuple(rows[0]) if rows else None


def latest_scores(store: Store):
    """The most recent score of each (student, benchmark), as a DataFrame."""
    return store.query_df(
        "SELECT student, benchmark, accuracy, n, n_correct, grader_version, model_version, eval_config_hash,"
        " mlflow_run_id, dagster_run_id, created_at FROM evaluation_scores"
        " QUALIFY row_number() OVER (PARTITION BY student, benchmark ORDER BY created_at DESC) = 1"
        " ORDER BY student, benchmark")


STUDENT_ORDER = ["base", "cold_start", "standard_kd", "posthoc", "gen_ssd"]


def graded_outputs(store: Store, score) -> list[dict]:
    """The per-question grades behind one score row (model, benchmark, grader, settings), as
    `core.statistics` records."""
    rows = store.query(
        "SELECT problem_id, correct FROM evaluation_outputs WHERE model_version = ? AND benchmark = ?"
        " AND grader_version = ? AND eval_config_hash = ? ORDER BY problem_id",
        [score.model_version, score.benchmark, score.grader_version, score.eval_config_hash])
    return [{"question_id": pid, "correct": bool(correct)} for pid, correct in rows]


def _interval(records: list[dict], compute) -> Interval | None:
    """An interval, or None where the outputs cannot give one (fewer than two questions stored)."""
    try:
        return compute(records)
    except ConfigError:
        return None


def score_intervals(store: Store, df) -> dict[tuple[str, str], Interval | None]:
    """(student, benchmark) -> pass@1 with its 95% interval over questions, for each row of `df`."""
    return {(r.student, r.benchmark): _interval(graded_outputs(store, r), pass_at_1) for r in df.itertuples()}


def paired_differences(store: Store, df, baseline: str = "standard_kd") -> list[tuple[str, str, Interval]]:
    """(student, benchmark, student − baseline) for every student scored beside `baseline` on a
    benchmark, paired by question (only the questions both answered)."""
    out = []
    graded = {(r.student, r.benchmark): graded_outputs(store, r) for r in df.itertuples()}  # one read per row
    for (student, bench), a in graded.items():
        b = graded.get((baseline, bench))
        if student == baseline or b is None:
            continue
        shared = {r["question_id"] for r in a} & {r["question_id"] for r in b}
        diff = _interval([r for r in a if r["question_id"] in shared], lambda x: paired_difference(
            x, [r for r in b if r["question_id"] in shared]))
        if diff is not None:
            out.append((student, bench, diff))
    order = {s: i for i, s in enumerate(STUDENT_ORDER)}
    return sorted(out, key=lambda t: (t[1], order.get(t[0], 99)))


INTERVAL_NOTE = ("95% intervals over test questions (clustered standard error, normal approximation; "
                 "core/statistics.py). They hold the students fixed: a new training seed moves a score further.")


def score_table(df, intervals: dict | None = None) -> str:
    """A markdown table, one row per student and one column per benchmark: accuracy in %, ± the
    half-width of its 95% interval where `intervals` has one."""
    if df.empty:
        return "(no evaluation scores yet)"
    intervals = intervals or {}
    wide = df.pivot(index="student", columns="benchmark", values="accuracy")
    order = [s for s in STUDENT_ORDER if s in wide.index] + [s for s in wide.index if s not in STUDENT_ORDER]
    wide = wide.loc[order]
    n = df.groupby("benchmark").n.max()
    header = "| student | " + " | ".join(f"{b} (n={n[b]})" for b in wide.columns) + " |"
    sep = "|---|" + "---:|" * len(wide.columns)
    lines = [header, sep]
    for student, row in wide.iterrows():
        cells = []
        for bench, v in row.items():
            ci = intervals.get((student, bench))
            cells.append("—" if v != v else ci.fmt() if ci else f"{100 * v:.1f}")
        lines.append(f"| {student} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_table(diffs: list[tuple[str, str, Interval]], baseline: str = "standard_kd") -> str:
    """Each student minus `baseline`, paired by question, in points, with whether it is within noise."""
    if not diffs:
        return ""
    lines = [f"| student − {baseline} | benchmark | difference (points) | questions | |", "|---|---|---:|---:|---|"]
    for student, bench, d in diffs:
        verdict = "within noise" if d.low <= 0 <= d.high else ("ahead" if d.low > 0 else "behind")
        lines.append(f"| {student} | {bench} | {100 * d.estimate:+.1f} ± {100 * (d.high - d.estimate):.1f} |"
                     f" {d.n_questions} | {verdict} |")
    return "\n".join(lines)


def noise_sentence(diffs: list[tuple[str, str, Interval]]) -> str:
    """One line that says whether the differences shown can be told from noise."""
    if not diffs:
        return ""
    within = [f"{s} on {b}" for s, b, d in diffs if d.low <= 0 <= d.high]
    if len(within) == len(diffs):
        head = "Every difference from Standard KD above is within noise (its 95% interval includes 0)."
    elif within:
        head = f"Within noise (95% interval includes 0): {', '.join(within)}."
    else:
        head = "No difference from Standard KD above is within noise at 95%."
    return (f"{head} One training seed on these few problems cannot tell the methods apart: "
            "`make compare` (`gen-ssd compare`) measures them over seeds at an equal teacher budget.")
