"""Thresholds calibrated from the cold-start student, and the MoRSD-style answer-likelihood selection."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest

from gen_ssd_dagster.core.method.calibration import calibrate, calibrated, line_ppls, quantile, split_lines
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig, config_dict, config_hash
from gen_ssd_dagster.core.errors import ConfigError


def _backends(teacher_dir, student_dir):
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
    from gen_ssd_dagster.core.engines.models import ModelSpec

    return TransformersTeacher(ModelSpec(str(teacher_dir))), TransformersScorer(ModelSpec(str(student_dir)))


def test_quantile_and_lines():
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0], 0.9) == pytest.approx(1.9)
    assert split_lines("Step 1: 2 + 3 = 5\n\n#### 5") == ["Step 1: 2 + 3 = 5\n", "#### 5"]


def test_threshold_rules_give_their_documented_values():
    """docs/thresholds.md: mode_split is Otsu's cut on log values (geometric mean of the two values
    either side); median_multiple is 2 x the median."""
    from gen_ssd_dagster.core.errors import DataError
    from gen_ssd_dagster.core.method.threshold_rules import mode_split, threshold

    # two modes: stepwise openings near 20, verbose ones near 80; the cut falls between 22 and 60
    sample = [18.0, 20.0, 22.0, 60.0, 80.0, 100.0, 90.0, 70.0]
    assert mode_split(sample) == pytest.approx(math.sqrt(22.0 * 60.0))
    assert threshold("mode_split", sample, 0.9) == mode_split(sample)
    # the cut does not follow the shares, as a quantile does: three times as many hard lines, same cut
    assert mode_split([18.0, 20.0, 22.0] + [60.0, 80.0, 100.0, 90.0, 70.0] * 3) == pytest.approx(math.sqrt(22.0 * 60.0))
    assert threshold("median_multiple", sample, 0.9) == pytest.approx(2 * 65.0)
    assert threshold("teacher_quantile", sample, 0.5) == pytest.approx(65.0)
    assert mode_split([1.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(DataError, match="two distinct values"):
        mode_split([5.0, 5.0, 5.0])
    with pytest.raises(ConfigError, match="computes no threshold"):
        threshold("hand", sample, 0.9)


def test_line_ppls_score_each_line_given_the_lines_before(tiny_models):
    """A line's PPL equals the whole-text score difference; ratios compare it with the prefix's PPL."""
    _, scorer = _backends(*tiny_models)
    question, text = "Mia has 2 apples. First she buys 3 more. How many apples now?", "a b\nc d e\n#### 5"
    got = line_ppls([question], [text], scorer, "token")
    lines = split_lines(text)
    prefix = [scorer.score_texts([question], ["".join(lines[:i])], [i == len(lines)])[0] for i in (1, 2, 3)]
    first = math.exp(prefix[0].nll / prefix[0].tokens)
    assert got.texts == 1 and got.first == [pytest.approx(first, rel=1e-4)]
    assert len(got.ratios) == 2
    second_nll, second_tokens = prefix[1].nll - prefix[0].nll, prefix[1].tokens - prefix[0].tokens
    assert got.ratios[0] == pytest.approx(math.exp(second_nll / second_tokens) / first, rel=1e-3)


def test_calibration_reads_the_quantile_and_records_itself(tiny_models, memorizing_teacher):
    from gen_ssd_dagster.core.demo.world import generate_problems

    teacher, scorer = _backends(memorizing_teacher, tiny_models[1])
    problems = generate_problems(8, 0, "train")
    base = GenSSDConfig(sampling=SamplingConfig(max_new_tokens=64, temperature=0.5, solution_end="answer_line"))
    low, ppls = calibrate(problems, teacher, scorer, base, 0.5, batch_size=4)
    high, _ = calibrate(problems, teacher, scorer, base, 0.9, batch_size=4)
    assert low.texts == 8 and low.first_lines == 8 and low.later_lines == len(ppls.ratios) > 0
    assert low.max_ppl == pytest.approx(quantile(ppls.first, 0.5), rel=1e-3)
    assert low.ppl_ratio == pytest.approx(quantile(ppls.ratios, 0.5), rel=1e-3)
    assert high.max_ppl >= low.max_ppl and high.ppl_ratio >= low.ppl_ratio

    config = calibrated(base, high)
    assert (config.max_ppl, config.ppl_ratio) == (high.max_ppl, high.ppl_ratio)
    assert config_dict(config)["calibration"]["quantile"] == 0.9
    # hand-set thresholds are recorded by the absence of a calibration: old keys stay valid
    assert "calibration" not in config_dict(base)
    assert config_hash(dataclasses.replace(config, calibration=None)) != config_hash(config)
    with pytest.raises(ConfigError, match="quantile"):
        calibrate(problems, teacher, scorer, base, 1.0)

    # another rule reads the same PPLs its own way, and says so in the record every trajectory carries
    split, same = calibrate(problems, teacher, scorer, base, 0.9, batch_size=4, rule="median_multiple")
    assert same == ppls and split.rule == "median_multiple"
    assert split.max_ppl == pytest.approx(max(2 * statistics.median(ppls.first), 1 + 1e-6), rel=1e-3)
    assert split.ppl_ratio == pytest.approx(2 * statistics.median(ppls.ratios), rel=1e-3)
    assert config_dict(calibrated(base, split))["calibration"]["rule"] == "median_multiple"
    assert "rule" not in config_dict(config)["calibration"]  # teacher_quantile: stored keys from before rules stay
    with pytest.raises(ConfigError, match="calibration rule must be one of"):
        calibrate(problems, teacher, scorer, base, 0.9, rule="hand")


def test_answer_likelihood_keeps_the_sample_whose_answer_the_student_finds_likeliest(tiny_models):
    from gen_ssd_dagster.core.method.baselines import answer_nlls, select_lowest, split_answer
    from gen_ssd_dagster.core.types import Trajectory

    _, scorer = _backends(*tiny_models)
    q = "Tom has 4 coins. First he finds 2 more. How many coins now?"
    texts = ["Step 1: 4 + 2 = 6\n#### 6", "4 + 2 is 6, I think.\n#### 6", "Step 1: 4 + 2 = 7\n#### 7"]
    samples = [Trajectory(dataset="demo", problem_id="p", method="standard_kd", sample_index=i, question=q,
                          gold="6", text=t, end_reason="finished", teacher_tokens=10, student_tokens=10, ppl=2.0,
                          predicted=t[-1], correct=t.endswith("6")) for i, t in enumerate(texts)]
    assert split_answer(texts[0]) == ("Step 1: 4 + 2 = 6", "\n#### 6")
    nlls = answer_nlls(samples, scorer, batch_size=2)
    # the NLL of the answer line given the rationale: whole text minus rationale alone
    for t, nll in zip(texts, nlls):
        rationale, _ = split_answer(t)
        whole = scorer.score_texts([q], [t], [True])[0].nll
        part = scorer.score_texts([q], [rationale], [False])[0].nll
        assert nll == pytest.approx(whole - part, rel=1e-3, abs=1e-3)
    select_lowest(samples, nlls)  # the answer-likelihood selection
    assert [s.selected for s in samples].count(True) == 1
    chosen = next(s for s in samples if s.selected)
    assert chosen.correct and nlls[chosen.sample_index] == min(nlls[:2])  # the wrong sample is never chosen
