"""Arms -> one row per method (or sweep point): means over seeds with their spread, as markdown."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from gen_ssd_dagster.core.experiments.comparison import ArmResult
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.evaluation.statistics import paired_difference, variance_components

ORDER = ["base", "cold_start", "standard_kd", "posthoc", "answer_likelihood", "gen_ssd"]
LABELS = {"base": "base student", "cold_start": "cold start", "standard_kd": "Standard KD",
          "posthoc": "post-hoc filter", "answer_likelihood": "answer likelihood (MoRSD-style)", "gen_ssd": "Gen-SSD"}


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float  # sample standard deviation over seeds (0 for one seed)
    n: int

    def fmt(self, digits: int = 1, scale: float = 1.0) -> str:
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.sd * scale:.{digits}f}"


def spread(values) -> Spread | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return Spread(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def summarise(arms: list[ArmResult]) -> list[dict]:
    """One dict per label (in ORDER, then as they come), each metric a `Spread` over seeds."""
    labels: list[str] = []
    for arm in arms:
        if arm.label not in labels:
            labels.append(arm.label)
    labels.sort(key=lambda label: ORDER.index(label) if label in ORDER else len(ORDER))
    kd_by_seed = {a.seed: a.accuracy for a in arms if a.label == "standard_kd"}
    rows = []
    for label in labels:
        mine = [a for a in arms if a.label == label]
        rows.append({
            "label": label, "kind": mine[0].kind, "seeds": [a.seed for a in mine],
            "accuracy": spread(a.accuracy for a in mine),
            # Paired by seed: the same problem stream and sampling seed for both methods.
            "vs_standard_kd": spread(a.accuracy - kd_by_seed[a.seed] for a in mine
                                     if a.seed in kd_by_seed and label != "standard_kd"),
            "student_tokens": spread(a.mean_student_tokens for a in mine),
            "ppl": spread(a.mean_ppl for a in mine),
            "acceptance": spread(a.acceptance_rate for a in mine),
            "prune": spread(a.prune_rate for a in mine),
            "tokens_per_accepted": spread(a.tokens_per_accepted for a in mine),
            "teacher_tokens": spread(a.teacher_tokens for a in mine if a.kind != "reference"),
            "problems": spread(a.problems for a in mine if a.kind != "reference"),
            "selected": spread(a.selected for a in mine if a.kind != "reference"),
            "minutes": spread((a.generate_seconds + a.train_seconds + a.eval_seconds) / 60 for a in mine),
        })
    return rows


def _records(arms: list[ArmResult], label: str) -> list[dict]:
    return [{"question_id": q, "seed": a.seed, "sample_index": i, "correct": c} for a in arms if a.label == label
            for q, grades in a.graded.items()
            for i, c in enumerate(grades if isinstance(grades, list) else [grades])]  # arms stored before samples: one bool


def paired_vs_standard_kd(arms: list[ArmResult], label: str) -> dict | None:
    """`label` − Standard KD, paired by seed and test question, with its 95% interval.

    One seed: the clustered SE over questions (the trained students held fixed). Several seeds:
    the SE of the mean over seeds with seeds and questions both random (`variance_components`),
    so the interval answers "would another set of training runs agree?". None when the arms carry
    no per-question grades (stored before they did) or do not pair up."""
    a, b = _records(arms, label), _records(arms, "standard_kd")
    if not a or not b or label == "standard_kd":
        return None
    try:
        diff = paired_difference(a, b)
        parts = variance_components(a, b) if diff.n_seeds > 1 else None
    except ConfigError:
        return None
    stderr = parts.mean_stderr if parts else diff.stderr
    return {"estimate": diff.estimate, "stderr": stderr, "half": 1.959964 * stderr, "n_seeds": diff.n_seeds,
            "n_questions": diff.n_questions, "components": parts}


def paired_differences(arms: list[ArmResult]) -> list[dict]:
    """Each label's `paired_vs_standard_kd` as plain data (`gen-ssd report --json`): the table's
    paired column, its 95% interval and its split into training-seed and test-question variance
    (fractions; None with one seed, whose interval holds the students fixed)."""
    rows = []
    for r in summarise(arms):
        p = paired_vs_standard_kd(arms, r["label"])
        if p is None:
            continue
        c = p["components"]
        rows.append({"label": r["label"], "minus": "standard_kd", "estimate": p["estimate"], "stderr": p["stderr"],
                     "low95": p["estimate"] - p["half"], "high95": p["estimate"] + p["half"],
                     "n_seeds": p["n_seeds"], "n_questions": p["n_questions"],
                     "seed_var": c.seed_var if c else None, "question_var": c.question_var if c else None,
                     "components": c.as_dict() if c else None})
    return rows


def _paired_cell(p: dict | None) -> str:
    if p is None:
        return "—"
    return f"{100 * p['estimate']:+.1f} ± {100 * p['half']:.1f} ({p['n_seeds']} × {p['n_questions']})"


def spread_sources(arms: list[ArmResult], label: str = "gen_ssd") -> str:
    """One sentence on where the spread of `label` − Standard KD comes from."""
    p = paired_vs_standard_kd(arms, label)
    if p is None or p["components"] is None:
        return ""
    c = p["components"]
    return (f"Where the spread of {LABELS.get(label, label)} − Standard KD comes from: one seed's difference has a "
            f"standard error of {100 * c.single_seed_stderr:.1f} points, of which training seeds give "
            f"{100 * c.seed_var ** 0.5:.1f} and the {c.n_questions} test questions "
            f"{100 * c.within_seed_var ** 0.5:.1f} (in quadrature; two-way random effects, core/evaluation/statistics.py). "
            f"Over {c.n_seeds} seeds the mean's standard error is {100 * c.mean_stderr:.1f}.")


def _cell(s: Spread | None, digits: int = 1, scale: float = 1.0, signed: bool = False) -> str:
    if s is None:
        return "—"
    text = s.fmt(digits, scale)
    return f"+{text}" if signed and s.mean >= 0 else text


def markdown(arms: list[ArmResult], budget: int | None = None) -> str:
    """The comparison table: accuracy in points (mean ± sd over seeds), then what the data was."""
    rows = summarise(arms)
    header = ("| student | seeds | accuracy % | Δ vs Standard KD (pts) | Δ paired, 95% (seeds × questions) "
              "| trajectory length (student tokens) "
              "| training-data PPL | accepted % | pruned % | teacher tokens / trajectory | problems | trajectories "
              "| minutes |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| " + " | ".join([
            LABELS.get(r["label"], r["label"]), str(len(r["seeds"])) if r["kind"] != "reference" else "—",
            _cell(r["accuracy"], 1, 100), _cell(r["vs_standard_kd"], 1, 100, signed=True),
            _paired_cell(paired_vs_standard_kd(arms, r["label"])),
            _cell(r["student_tokens"]), _cell(r["ppl"], 2), _cell(r["acceptance"], 0, 100),
            _cell(r["prune"], 0, 100), _cell(r["tokens_per_accepted"], 0), _cell(r["problems"], 0),
            _cell(r["selected"], 0), _cell(r["minutes"], 1)]) + " |")
    if budget:
        lines.append(f"\nEvery arm's training data cost at most {budget:,} teacher tokens (post-hoc and answer "
                     "likelihood re-select Standard KD's very samples). PPL is the cold-start student's, per token.")
    lines.append("\nAccuracy and Δ: mean ± sd over seeds. Δ paired: the mean difference from Standard KD on the same "
                 "seeds and test questions ± its 95% interval, training seeds and test questions both random "
                 "(with one seed, test questions only: the interval then ignores how much another seed would differ).")
    if sources := spread_sources(arms):
        lines.append(sources)
    return "\n".join(lines)
