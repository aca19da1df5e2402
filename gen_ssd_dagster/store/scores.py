"""Evaluation scores: one row per (student, benchmark) measurement, with the grader's version,
and their 95% intervals from the graded outputs behind them (`core.evaluation.statistics`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..core.errors import ConfigError
from ..core.evaluation.statistics import Interval, maj_at_k, paired_difference, pass_at_1
from .db import Store


@dataclass(frozen=True)
class EvaluationScore:
    """One row of `evaluation_scores`: a student's accuracy on a benchmark (not a scorer's NLL of a
    text, which is `core.engines.interfaces.Score`)."""

    student: str
    model_version: str
    benchmark: str
    n: int  # questions
    n_correct: int  # correct answers over all samples
    accuracy: float  # pass@1 = n_correct / (n * samples)
    grader_version: str
    eval_config_hash: str
    model_path: str | None = None
    dagster_run_id: str | None = None
    mlflow_run_id: str | None = None
    samples: int = 1  # answers per question
    eval_settings: str | None = None  # EvalSettings.record(), as JSON


def write_scores(store: Store, scores: list[EvaluationScore]) -> None:
    with store.transaction() as con:
        con.executemany(
            "INSERT INTO evaluation_scores (student, model_version, benchmark, n, n_correct, accuracy,"
            " grader_version, eval_config_hash, model_path, dagster_run_id, mlflow_run_id, samples, eval_settings)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.student, s.model_version, s.benchmark, s.n, s.n_correct, s.accuracy, s.grader_version,
              s.eval_config_hash, s.model_path, s.dagster_run_id, s.mlflow_run_id, s.samples, s.eval_settings)
             for s in scores])


def cached_score(store: Store, model_version: str, benchmark: str, grader_version: str,
                 eval_config_hash: str) -> tuple[int, int, float] | None:
    """(n, n_correct, accuracy) of an earlier evaluation of the very same model, benchmark, grader and settings."""
    rows = store.query(
        "SELECT n, n_correct, accuracy FROM evaluation_scores WHERE model_version = ? AND benchmark = ?"
        " AND grader_version = ? AND eval_config_hash = ? ORDER BY created_at DESC LIMIT 1",
        [model_version, benchmark, grader_version, eval_config_hash])
    return tuple(rows[0]) if rows else None


def latest_scores(store: Store):
    """The most recent score of each (student, benchmark), as a DataFrame."""
    return store.query_df(
        "SELECT student, benchmark, accuracy, n, n_correct, samples, eval_settings, grader_version, model_version,"
        " eval_config_hash,"
        " mlflow_run_id, dagster_run_id, created_at FROM evaluation_scores"
        " QUALIFY row_number() OVER (PARTITION BY student, benchmark ORDER BY created_at DESC) = 1"
        " ORDER BY student, benchmark")


STUDENT_ORDER = ["base", "cold_start", "standard_kd", "posthoc", "gen_ssd"]


def graded_outputs(store: Store, score) -> list[dict]:
    """The graded answers behind one score row (model, benchmark, grader, settings), every sample of
    each question, as `core.evaluation.statistics` records."""
    rows = store.query(
        "SELECT problem_id, sample_index, correct, predicted FROM evaluation_outputs WHERE model_version = ?"
        " AND benchmark = ? AND grader_version = ? AND eval_config_hash = ? ORDER BY problem_id, sample_index",
        [score.model_version, score.benchmark, score.grader_version, score.eval_config_hash])
    return [{"question_id": pid, "sample_index": index, "correct": bool(correct), "predicted": predicted}
            for pid, index, correct, predicted in rows]


def _interval(records: list[dict], compute) -> Interval | None:
    """An interval, or None where the outputs cannot give one (fewer than two questions stored)."""
    try:
        return compute(records)
    except ConfigError:
        return None


Graded = dict[tuple[str, str], list[dict]]  # (student, benchmark) -> graded_outputs of that score row


def graded_by_row(store: Store, df) -> Graded:
    """The graded answers behind every row of `df`, read once (the functions below take them)."""
    return {(r.student, r.benchmark): graded_outputs(store, r) for r in df.itertuples()}


def score_intervals(store: Store, df, graded: Graded | None = None) -> dict[tuple[str, str], Interval | None]:
    """(student, benchmark) -> pass@1 with its 95% interval over questions, for each row of `df`."""
    graded = graded if graded is not None else graded_by_row(store, df)
    return {(r.student, r.benchmark): _interval(graded[r.student, r.benchmark], pass_at_1) for r in df.itertuples()}


def maj_intervals(store: Store, df, graded: Graded | None = None) -> dict[tuple[str, str], tuple[int, Interval]]:
    """(student, benchmark) -> (k, maj@k with its 95% interval) for the rows evaluated with `maj_k`."""
    out = {}
    for r in df.itertuples():
        k = json.loads(r.eval_settings).get("maj_k") if getattr(r, "eval_settings", None) else None
        if k:
            records = graded[r.student, r.benchmark] if graded is not None else graded_outputs(store, r)
            ci = _interval(records, lambda x: maj_at_k(x, k))
            if ci:
                out[r.student, r.benchmark] = (k, ci)
    return out


def maj_table(majs: dict[tuple[str, str], tuple[int, Interval]]) -> str:
    """maj@k per student and benchmark, in %, ± the half-width of its 95% interval."""
    if not majs:
        return ""
    lines = ["| student | benchmark | maj@k % |", "|---|---|---:|"]
    order = {s: i for i, s in enumerate(STUDENT_ORDER)}
    for (student, bench), (k, ci) in sorted(majs.items(), key=lambda t: (t[0][1], order.get(t[0][0], 99))):
        lines.append(f"| {student} | {bench} | maj@{k}: {ci.fmt()} |")
    return "\n".join(lines)


def paired_differences(store: Store, df, baseline: str = "standard_kd",
                       graded: Graded | None = None) -> list[tuple[str, str, Interval]]:
    """(student, benchmark, student − baseline) for every student scored beside `baseline` on a
    benchmark, paired by question (only the questions both answered)."""
    out = []
    graded = graded if graded is not None else graded_by_row(store, df)
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


def settings_line(settings, grader_version: str) -> str:
    """How the answers were generated and graded, beside the scores (core.evaluation.EvalSettings)."""
    how = ("greedy" if settings.greedy else
           f"{settings.samples} samples per question at temperature {settings.temperature}, top-p {settings.top_p}")
    return (f"Answers: {how}, at most {settings.max_new_tokens} tokens each (seed {settings.seed}); each student "
            f"prompted through its own chat template or plain format; grader {grader_version}.")


def settings_lines(df) -> str:
    """`settings_line` for each set of settings the rows of `df` were scored under (rows stored
    before settings were recorded are left out)."""
    from ..core.evaluation.evaluate import EvalSettings

    groups: dict[tuple, list[str]] = {}
    for r in df.itertuples():
        if getattr(r, "eval_settings", None):
            groups.setdefault((json.dumps(json.loads(r.eval_settings), sort_keys=True), r.grader_version),
                              []).append(f"{r.student} on {r.benchmark}")
    lines = [settings_line(EvalSettings(**json.loads(s)), g) for s, g in groups]
    if len(groups) > 1:
        lines = [f"{line} ({', '.join(who)})" for line, who in zip(lines, groups.values())]
    return "\n".join(lines)


def answer_lengths(store: Store, df) -> str:
    """One line: the mean number of tokens each student generated per answer (from the stored answers;
    an answer cut at its solution end may have been generated past it)."""
    parts = []
    order = {s: i for i, s in enumerate(STUDENT_ORDER)}
    for r in sorted(df.itertuples(), key=lambda r: (r.benchmark, order.get(r.student, 99))):
        rows = store.query(
            "SELECT avg(tokens) FROM evaluation_outputs WHERE model_version = ? AND benchmark = ?"
            " AND grader_version = ? AND eval_config_hash = ?",
            [r.model_version, r.benchmark, r.grader_version, r.eval_config_hash])
        if rows and rows[0][0] is not None:
            parts.append(f"{r.student} {rows[0][0]:.0f}" + (f" on {r.benchmark}" if df.benchmark.nunique() > 1 else ""))
    return f"Tokens generated per answer (mean): {', '.join(parts)}." if parts else ""


def report(store: Store, df) -> tuple[str, dict, list, dict]:
    """The scores of `df` as people read them: pass@1 ± 95%, maj@k where asked, differences from
    Standard KD paired by question, whether they are within noise, and how the answers were made.
    Returns (markdown, intervals, differences, maj@k intervals)."""
    graded = graded_by_row(store, df)  # each score's answers read once for all three
    intervals = score_intervals(store, df, graded)
    diffs, majs = paired_differences(store, df, graded=graded), maj_intervals(store, df, graded)
    parts = (score_table(df, intervals), maj_table(majs), difference_table(diffs), noise_sentence(diffs),
             settings_lines(df), answer_lengths(store, df), INTERVAL_NOTE if not df.empty else "")
    return "\n\n".join(p for p in parts if p), intervals, diffs, majs


INTERVAL_NOTE = ("95% intervals over test questions (clustered standard error, normal approximation; "
                 "core/evaluation/statistics.py). They hold the students fixed: a new training seed moves a score further.")


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
    samples = df.groupby("benchmark").samples.max() if "samples" in df else {}
    header = "| student | " + " | ".join(
        f"{b} (n={n[b]}" + (f", {samples[b]} samples each)" if samples.get(b, 1) > 1 else ")")
        for b in wide.columns) + " |"
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
