"""Evaluation scores: one row per (student, benchmark) measurement, with the grader's version."""

from __future__ import annotations

from dataclasses import dataclass

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
        "SELECT student, benchmark, accuracy, n, n_correct, grader_version, model_version, mlflow_run_id,"
        " dagster_run_id, created_at FROM evaluation_scores"
        " QUALIFY row_number() OVER (PARTITION BY student, benchmark ORDER BY created_at DESC) = 1"
        " ORDER BY student, benchmark")


STUDENT_ORDER = ["base", "cold_start", "standard_kd", "posthoc", "gen_ssd"]


def score_table(df) -> str:
    """A markdown table, one row per student and one column per benchmark."""
    if df.empty:
        return "(no evaluation scores yet)"
    wide = df.pivot(index="student", columns="benchmark", values="accuracy")
    order = [s for s in STUDENT_ORDER if s in wide.index] + [s for s in wide.index if s not in STUDENT_ORDER]
    wide = wide.loc[order]
    header = "| student | " + " | ".join(wide.columns) + " |"
    sep = "|---|" + "---:|" * len(wide.columns)
    lines = [header, sep]
    for student, row in wide.iterrows():
        cells = ["—" if v != v else f"{v:.3f}" for v in row.tolist()]
        lines.append(f"| {student} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
