"""Pruning thresholds from the cold-start student's own view of the teacher's text.

An absolute `max_ppl` does not carry over between students (docs/reasoning-world.md). Instead:
1. the teacher samples full solutions to held-back problems (used by no method);
2. the student scores each line given the prompt and the lines before it (a line is what a chunk
   is under `snap_to_line` when lines are shorter than `chunk_tokens`);
3. a threshold rule (`threshold_rules`, docs/thresholds.md) reads `max_ppl` from the first lines'
   PPLs and `ppl_ratio` from the later lines' ratios (line PPL / PPL of the text before it). Under
   `teacher_quantile`, a step is pruned only when even its best candidate is less learnable than
   that share of the teacher's own lines.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from gen_ssd_dagster.core.batching import batches
from gen_ssd_dagster.core.engines.interfaces import Scorer, Teacher
from gen_ssd_dagster.core.method.config import Calibration, GenSSDConfig
from gen_ssd_dagster.core.errors import ConfigError, DataError
from gen_ssd_dagster.core.method.selection import normalised_ppl
from gen_ssd_dagster.core.method.threshold_rules import CALIBRATED_RULES, quantile, threshold
from gen_ssd_dagster.core.types import Problem

CALIBRATION_QUANTILE = 0.9  # ours, chosen before measuring (docs/reasoning-world.md)
CALIBRATION_PROBLEMS = 64  # held-back problems the teacher solves for it
# Added to the sampling seed, so that the held-back problems are not sampled as a method with the
# same seed samples its first problems.
CALIBRATION_SEED_OFFSET = 7919


@dataclass(frozen=True)
class LinePPLs:
    """Each held-back solution's line PPLs, and each later line's ratio to the text before it."""

    first: list[float]
    ratios: list[float]
    texts: int


def validate_quantile(quantile: float) -> None:
    if not 0 < quantile < 1:
        raise ConfigError(f"calibration quantile must be in (0, 1), got {quantile}")


def split_lines(text: str) -> list[str]:
    """A solution's lines, each with its newline: the chunks `snap_to_line` would cut."""
    return [line for line in text.splitlines(keepends=True) if line.strip()]


def line_ppls(questions: list[str], texts: list[str], scorer: Scorer, normalisation: str,
              batch_size: int = 64) -> LinePPLs:
    """Score every line of `texts` (solutions to `questions`) given what precedes it."""
    first: list[float] = []
    ratios: list[float] = []
    pairs = [(q, lines) for q, lines in zip(questions, map(split_lines, texts)) if lines]
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        lines = [ls for _, ls in batch]
        session = scorer.start([q for q, _ in batch])
        live = list(range(len(batch)))
        nll = {i: 0.0 for i in live}
        tokens = {i: 0 for i in live}
        seen = {i: "" for i in live}
        step = 0
        while live:
            texts_now = [lines[i][step] for i in live]
            ends = [step == len(lines[i]) - 1 for i in live]
            scores = session.score([[t] for t in texts_now], [[e] for e in ends])
            for i, text, (score,) in zip(live, texts_now, scores):
                ppl = normalised_ppl(score.nll, score.tokens, text, normalisation)
                if step == 0:
                    first.append(ppl)
                else:
                    ratios.append(ppl / normalised_ppl(nll[i], tokens[i], seen[i], normalisation))
                nll[i] += score.nll
                tokens[i] += score.tokens
                seen[i] += text
            step += 1
            session.accept([0 if step < len(lines[i]) else None for i in live])
            live = [i for i in live if step < len(lines[i])]
    return LinePPLs(first, ratios, len(pairs))


def calibrate(problems: list[Problem], teacher: Teacher, scorer: Scorer, config: GenSSDConfig, q: float,
              batch_size: int = 32, rule: str = "teacher_quantile") -> tuple[Calibration, LinePPLs]:
    """Thresholds by `rule` (at quantile `q` for teacher_quantile) from the student's PPLs of the
    teacher's full solutions to `problems`, sampled as `config.sampling` samples (one each)."""
    validate_quantile(q)
    if rule not in CALIBRATED_RULES:
        raise ConfigError(f"calibration rule must be one of {CALIBRATED_RULES}, got {rule!r}")
    if not problems:
        raise ConfigError("calibration needs held-back problems (got none)")
    s = config.sampling
    questions, texts = [], []
    for _, batch, seed in batches(problems, batch_size, s.seed + CALIBRATION_SEED_OFFSET):
        session = teacher.start([p.question for p in batch], s.temperature, s.top_p, seed)
        proposals = session.propose(1, [s.max_new_tokens] * len(batch), stop_at_newline=False)
        questions += [p.question for p in batch]
        texts += [s.end_rule.cut(props[0].text) for props in proposals]
    ppls = line_ppls(questions, texts, scorer, config.ppl_normalisation)
    if not ppls.first or not ppls.ratios:
        raise DataError(f"calibration: the teacher's {len(texts)} held-back solutions gave {len(ppls.first)} first "
                        f"lines and {len(ppls.ratios)} later lines; both are needed (more problems, or a teacher "
                        "that writes more than one line)")
    return thresholds_by_rule(ppls, rule, q), ppls


def thresholds_by_rule(ppls: LinePPLs, rule: str, q: float) -> Calibration:
    """The record of `rule`'s thresholds read from `ppls` (docs/thresholds.md)."""
    max_ppl = max(threshold(rule, ppls.first, q), 1.0 + 1e-6)  # a perplexity is never below 1
    return Calibration(quantile=q, max_ppl=round(max_ppl, 4), ppl_ratio=round(threshold(rule, ppls.ratios, q), 4),
                       texts=ppls.texts, first_lines=len(ppls.first), later_lines=len(ppls.ratios), rule=rule)


def calibrated(config: GenSSDConfig, calibration: Calibration) -> GenSSDConfig:
    """`config` with its thresholds replaced by the calibrated ones, which it records."""
    return dataclasses.replace(config, max_ppl=calibration.max_ppl, ppl_ratio=calibration.ppl_ratio,
                               calibration=calibration)


def summary(ppls: LinePPLs) -> dict:
    """Medians and spreads of what the thresholds were read from (for metadata and logs)."""
    return {"first_line_ppl_median": round(statistics.median(ppls.first), 3),
            "later_line_ratio_median": round(statistics.median(ppls.ratios), 3),
            "texts": ppls.texts, "first_lines": len(ppls.first), "later_lines": len(ppls.ratios)}
