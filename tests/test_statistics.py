"""Error bars of core/evaluation/statistics.py against small cases worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.evaluation.statistics import (
    Interval,
    bootstrap_interval,
    maj_at_k,
    pass_at_1,
    pass_at_k,
    paired_difference,
    paired_question_differences,
    per_question_means,
    seed_differences,
    variance_components,
)

Z95 = 1.959963984540054


def graded(table: dict[str, list], seed: int = 0, predicted: dict[str, list] | None = None) -> list[dict]:
    """One record per sample: {question_id: [correct of sample 0, sample 1, ...]}."""
    return [
        {"question_id": q, "seed": seed, "sample_index": i, "correct": bool(ok),
         **({"predicted": predicted[q][i]} if predicted else {})}
        for q, oks in table.items() for i, ok in enumerate(oks)
    ]


def seeded(grid: dict[int, dict[str, list]]) -> list[dict]:
    return [r for seed, table in grid.items() for r in graded(table, seed)]


# per-question means 1, 0.5, 0.25, 0.25 (4 samples each)
FOUR = {"q1": [1, 1, 1, 1], "q2": [1, 0, 1, 0], "q3": [0, 0, 1, 0], "q4": [0, 1, 0, 0]}


def test_pass_at_1_by_hand():
    iv = pass_at_1(graded(FOUR))
    # mean = (1 + .5 + .25 + .25)/4 = .5; deviations .5, 0, -.25, -.25 -> squares sum .375;
    # var (n-1) = .375/3 = .125; stderr = sqrt(.125)/sqrt(4) = sqrt(1/32) = .1767767
    assert iv.estimate == pytest.approx(0.5)
    assert iv.stderr == pytest.approx(math.sqrt(1 / 32))
    # 1.959964 * .1767767 = .3464767
    assert (iv.low, iv.high) == pytest.approx((0.5 - 0.3464767, 0.5 + 0.3464767), abs=1e-6)
    assert (iv.n_questions, iv.n_seeds) == (4, 1)
    assert iv.fmt() == "50.0 ± 34.6"
    assert iv.as_dict() == {"estimate": iv.estimate, "stderr": iv.stderr, "low": iv.low, "high": iv.high,
                            "n_questions": 4, "n_seeds": 1, "method": iv.method}
    assert "clustered" in iv.method and "95%" in iv.method


def test_pass_at_1_weights_questions_not_samples():
    # q1: 1 sample, correct -> 1.0; q2: 3 samples, all wrong -> 0.0. Per question: (1 + 0)/2 = .5,
    # not the pooled 1/4 of the samples. stderr = sd(1, 0)/sqrt(2) = sqrt(.5)/sqrt(2) = .5
    iv = pass_at_1(graded({"q1": [1], "q2": [0, 0, 0]}))
    assert iv.estimate == pytest.approx(0.5) and iv.stderr == pytest.approx(0.5)
    assert iv.low == 0.0 and iv.high == 1.0  # .5 ± .98 clipped on both sides
    assert per_question_means(graded({"q1": [1], "q2": [0, 0, 0]})) == {"q1": 1.0, "q2": 0.0}


def test_pass_at_1_averages_seeds_within_the_question():
    # seed 0: q1 1.0, q2 0.0, q3 .5; seed 1: q1 .5, q2 0.0, q3 .5
    # per question over seeds: q1 .75, q2 0, q3 .5 -> mean 1.25/3 = .416667
    # deviations .333333, -.416667, .083333 -> squares .111111 + .173611 + .006944 = .291667;
    # var = .145833; stderr = sqrt(.145833/3) = .220479. Questions stay 3 clusters, not 6.
    records = seeded({0: {"q1": [1, 1], "q2": [0, 0], "q3": [1, 0]},
                      1: {"q1": [0, 1], "q2": [0, 0], "q3": [0, 1]}})
    iv = pass_at_1(records)
    assert iv.estimate == pytest.approx(1.25 / 3)
    assert iv.stderr == pytest.approx(math.sqrt(0.291666667 / 2 / 3))
    assert (iv.n_questions, iv.n_seeds) == (3, 2)


def test_interval_clipped_at_1_and_0():
    # nine questions right, one wrong: mean .9; var = (9 * .01 + .81)/9 = .1; stderr = sqrt(.1/10) = .1
    # .9 + 1.96 * .1 = 1.096 -> clipped to 1; the low side .704 is not clipped
    high = pass_at_1(graded({f"q{i}": [int(i < 9)] for i in range(10)}))
    assert high.stderr == pytest.approx(0.1)
    assert high.high == 1.0 and high.low == pytest.approx(0.9 - Z95 * 0.1)
    assert high.fmt() == "90.0 ± 19.6"  # the larger (unclipped) side, not (1 - .704)/2
    low = pass_at_1(graded({f"q{i}": [int(i == 0)] for i in range(10)}))
    assert low.estimate == pytest.approx(0.1) and low.low == 0.0 and low.high == pytest.approx(0.1 + Z95 * 0.1)


def brute_force_pass_at_k(oks: list[int], k: int) -> float:
    """The fraction of all k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(oks, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_pass_at_k_unbiased_matches_enumeration(k):
    table = {f"c{c}": [1] * c + [0] * (5 - c) for c in range(6)}  # n = 5 samples, c = 0..5 correct
    table["mixed"] = [0, 1, 0, 0, 1]
    expected = [brute_force_pass_at_k(oks, k) for oks in table.values()]
    iv = pass_at_k(graded(table), k)
    assert iv.estimate == pytest.approx(sum(expected) / len(expected))
    mean = sum(expected) / len(expected)
    sd = math.sqrt(sum((e - mean) ** 2 for e in expected) / (len(expected) - 1))
    assert iv.stderr == pytest.approx(sd / math.sqrt(len(expected)))


def test_pass_at_k_by_hand_and_pass_at_1_agrees():
    # q1: n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = .5; q2: n=4, c=0: 0 -> mean .25
    records = graded({"q1": [0, 1, 0, 0], "q2": [0, 0, 0, 0]})
    assert pass_at_k(records, 2).estimate == pytest.approx(0.25)
    assert pass_at_k(graded(FOUR), 1).estimate == pytest.approx(pass_at_1(graded(FOUR)).estimate)
    assert pass_at_k(graded(FOUR), 1).stderr == pytest.approx(pass_at_1(graded(FOUR)).stderr)


def test_pass_at_k_rejects_k_larger_than_samples_and_k_below_1():
    with pytest.raises(ConfigError, match=r"k=5 is larger than the 4 samples of question 'q1'"):
        pass_at_k(graded(FOUR), 5)
    with pytest.raises(ConfigError, match="k must be >= 1"):
        pass_at_k(graded(FOUR), 0)


MAJ_OK = {"A": [1, 0, 0, 1], "B": [0, 0, 1, 0], "C": [1, 0, 0, 0]}  # C: graded right, but no answer extracted
MAJ_PRED = {"A": ["7", "5", "5", "7"], "B": [None, None, "3", None], "C": [None] * 4}


@pytest.mark.parametrize(
    "k, expected",
    [
        # A: "7" -> right; B: only None -> wrong; C: wrong. 1/3
        (1, [1, 0, 0]),
        # A: "7" vs "5" tie, "7" seen first -> right; B: None x2 never wins, no answer -> wrong; C: wrong
        (2, [1, 0, 0]),
        # A: "5" wins 2-1 -> wrong; B: "3" beats two Nones -> right; C: wrong
        (3, [0, 1, 0]),
        # A: 2-2 tie, "7" first -> right; B: "3" beats three Nones -> right; C: all None, no vote -> wrong
        (4, [1, 1, 0]),
    ],
)
def test_maj_at_k_ties_and_none(k, expected):
    records = graded(MAJ_OK, predicted=MAJ_PRED)
    random.Random(k).shuffle(records)  # the vote must follow sample_index, not input order
    iv = maj_at_k(records, k)
    mean = sum(expected) / 3
    assert iv.estimate == pytest.approx(mean)
    # e.g. k=4: [1, 1, 0] -> var = (2 * (1/3)^2 + (2/3)^2)/2 = 1/3, stderr = sqrt(1/3)/sqrt(3) = 1/3
    assert iv.stderr == pytest.approx(math.sqrt(sum((e - mean) ** 2 for e in expected) / 2 / 3))


def test_maj_at_k_rejects_k_larger_than_samples():
    with pytest.raises(ConfigError, match=r"k=5 is larger than the 4 samples"):
        maj_at_k(graded(MAJ_OK, predicted=MAJ_PRED), 5)


# A per question: 1, .75, .25, 0; B per question: .75, .5, .25, 0 -> d = .25, .25, 0, 0
PAIR_A = {"q1": [1, 1, 1, 1], "q2": [1, 1, 1, 0], "q3": [1, 0, 0, 0], "q4": [0, 0, 0, 0]}
PAIR_B = {"q1": [1, 1, 1, 0], "q2": [1, 1, 0, 0], "q3": [0, 1, 0, 0], "q4": [0, 0, 0, 0]}


def test_paired_difference_is_much_tighter_than_unpaired():
    a, b = graded(PAIR_A), graded(PAIR_B)
    iv = paired_difference(a, b)
    # mean d = .125; squares of deviations 4 * .125^2 = .0625; var = .0625/3; stderr = sqrt(.0625/3/4) = .0721688
    assert iv.estimate == pytest.approx(0.125)
    assert iv.stderr == pytest.approx(math.sqrt(0.0625 / 12))
    assert iv.low == pytest.approx(0.125 - Z95 * math.sqrt(0.0625 / 12))
    # unpaired: A var = (.25 + .0625 + .0625 + .25)/3 = .625/3, B var = (.140625 * 2 + .015625 * 2)/3 = .3125/3;
    # sqrt(.625/12 + .3125/12) = sqrt(.078125) = .2795085, almost 4x the paired .0721688
    pa, pb = pass_at_1(a), pass_at_1(b)
    unpaired = math.sqrt(pa.stderr ** 2 + pb.stderr ** 2)
    assert unpaired == pytest.approx(math.sqrt(0.078125))
    assert iv.stderr < unpaired / 3
    assert paired_question_differences(a, b) == pytest.approx({"q1": 0.25, "q2": 0.25, "q3": 0.0, "q4": 0.0})


def test_paired_difference_rejects_different_questions():
    a = graded(PAIR_A)
    b = graded({"q1": [1], "q2": [0], "q3": [1], "q5": [0], "q6": [1]})
    with pytest.raises(ConfigError, match=r"1 only in records_a \(e\.g\. 'q4'\), 2 only in records_b \(e\.g\. 'q5', 'q6'\)"):
        paired_difference(a, b)


def test_paired_difference_rejects_different_seeds_and_pairs():
    a = seeded({0: PAIR_A, 1: PAIR_A})
    with pytest.raises(ConfigError, match=r"same seeds: records_a has \[0, 1\], records_b has \[0, 2\]"):
        paired_difference(a, seeded({0: PAIR_B, 2: PAIR_B}))
    without_q2 = {q: v for q, v in PAIR_B.items() if q != "q2"}
    with pytest.raises(ConfigError, match=r"same \(seed, question\) pairs; 1 are in only one of them, e.g. \[\(1, 'q2'\)\]"):
        seed_differences(a, seeded({0: PAIR_B, 1: without_q2}))


def test_seed_differences_and_paired_difference_over_seeds():
    # seed 0: A [1, 1, 0], B [0, 1, 0] -> d [1, 0, 0], D0 = 1/3; seed 1: A = B -> D1 = 0
    a = seeded({0: {"q1": [1], "q2": [1], "q3": [0]}, 1: {"q1": [1], "q2": [0], "q3": [0]}})
    b = seeded({0: {"q1": [0], "q2": [1], "q3": [0]}, 1: {"q1": [1], "q2": [0], "q3": [0]}})
    diffs = seed_differences(a, b)
    assert [s for s, _ in diffs] == [0, 1] and [d for _, d in diffs] == pytest.approx([1 / 3, 0.0])
    # per question over seeds: d = [.5, 0, 0] -> 1/6; var = (1/3^2 + 2 * (1/6)^2)/2 = 1/12; stderr = sqrt(1/36) = 1/6
    iv = paired_difference(a, b)
    assert iv.estimate == pytest.approx(1 / 6) and iv.stderr == pytest.approx(1 / 6)
    assert (iv.n_questions, iv.n_seeds) == (3, 2)
    assert iv.low == pytest.approx(1 / 6 - Z95 / 6)  # within [-1, 1], not clipped at 0


# d_sq (A - B, one greedy sample): seed 0 [1, 0], seed 1 [1, 1], seed 2 [0, 0]
VC_A = {0: {"q1": [1], "q2": [0]}, 1: {"q1": [1], "q2": [1]}, 2: {"q1": [0], "q2": [0]}}
VC_B = {0: {"q1": [0], "q2": [0]}, 1: {"q1": [0], "q2": [0]}, 2: {"q1": [0], "q2": [0]}}


def test_variance_components_by_hand():
    vc = variance_components(seeded(VC_A), seeded(VC_B))
    # D_s = .5, 1, 0 (grand .5): between = (0 + .25 + .25)/2 = .25
    assert [s for s, _ in vc.per_seed] == [0, 1, 2] and [d for _, d in vc.per_seed] == pytest.approx([0.5, 1.0, 0.0])
    assert vc.between_seed_var == pytest.approx(0.25)
    # var_q per seed: .5, 0, 0, each / Q=2: .25, 0, 0 -> mean 1/12
    assert vc.within_seed_var == pytest.approx(1 / 12)
    # per-question means 2/3, 1/3; residuals d - D_s - dbar_q + .5:
    # s0: 1/3, -1/3; s1: -1/6, 1/6; s2: -1/6, 1/6 -> squares 1/3; / ((3-1)(2-1)) = 1/6; / Q = 1/12
    assert vc.noise_var == pytest.approx(1 / 12)
    assert vc.seed_var == pytest.approx(0.25 - 1 / 12)  # 1/6
    # var(2/3, 1/3) = 1/18, / Q = 1/36, which is the paired SE^2
    assert vc.question_var == pytest.approx(1 / 36)
    assert vc.question_var == pytest.approx(paired_difference(seeded(VC_A), seeded(VC_B)).stderr ** 2)
    assert vc.single_seed_stderr == pytest.approx(math.sqrt(1 / 6 + 1 / 12))  # .5
    assert vc.mean_stderr == pytest.approx(math.sqrt(1 / 6 / 3 + 1 / 36))  # sqrt(1/12)
    assert (vc.n_seeds, vc.n_questions) == (3, 2) and vc.as_dict()["seed_var"] == vc.seed_var


def test_variance_components_no_seed_effect_is_clipped_at_zero():
    # every seed gives the same D_s = .5: between = 0, noise > 0 -> seed_var max(0, negative) = 0
    a = seeded({0: {"q1": [1], "q2": [0]}, 1: {"q1": [0], "q2": [1]}})
    b = seeded({0: {"q1": [0], "q2": [0]}, 1: {"q1": [0], "q2": [0]}})
    vc = variance_components(a, b)
    assert vc.between_seed_var == 0.0 and vc.noise_var > 0 and vc.seed_var == 0.0


def test_variance_components_needs_two_seeds_and_a_full_grid():
    with pytest.raises(ConfigError, match="at least 2 seeds and 2 questions, got 1 and 4"):
        variance_components(graded(PAIR_A), graded(PAIR_B))
    a = seeded({0: {"q1": [1], "q2": [0]}, 1: {"q1": [1]}})
    with pytest.raises(ConfigError, match="1 of the 4 .seed, question. pairs are missing"):
        variance_components(a, a)


def test_bootstrap_agrees_with_normal_interval_on_a_large_case():
    rng = random.Random(1)
    table = {}
    for i in range(1500):
        p = rng.random()
        table[f"q{i}"] = [int(rng.random() < p) for _ in range(4)]
    normal = pass_at_1(graded(table))
    boot = bootstrap_interval(per_question_means(graded(table)), n_boot=2000, seed=0)
    assert boot.estimate == pytest.approx(normal.estimate)
    assert boot.stderr == pytest.approx(normal.stderr, rel=0.1)
    assert boot.low == pytest.approx(normal.low, abs=0.005) and boot.high == pytest.approx(normal.high, abs=0.005)
    assert boot.n_questions == 1500 and "bootstrap" in boot.method
    assert bootstrap_interval(per_question_means(graded(table)), n_boot=2000, seed=0) == boot  # reproducible


def test_bootstrap_rows_are_averaged_per_question():
    rows = [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0]]  # the FOUR table
    assert bootstrap_interval(rows, n_boot=500) == bootstrap_interval([1.0, 0.5, 0.25, 0.25], n_boot=500)
    iv = bootstrap_interval(rows, n_boot=500)
    assert iv.estimate == pytest.approx(0.5) and 0.0 <= iv.low < 0.5 < iv.high <= 1.0


@pytest.mark.parametrize(
    "records, match",
    [
        ([], "records: no records"),
        ({"question_id": "q1", "correct": True}, "records: expected an iterable of mappings"),
        ([{"question_id": "q1"}], r"records\[0\]: correct must be a bool, got None"),
        ([{"question_id": "q1", "correct": 0.5}], r"records\[0\]: correct must be a bool"),
        ([{"question_id": 7, "correct": True}], r"records\[0\]: question_id must be a non-empty str"),
        ([{"question_id": "q1", "correct": True, "seed": "0"}], r"records\[0\].seed must be an int"),
        ([{"question_id": "q1", "correct": True}, {"question_id": "q1", "correct": False}],
         r"records\[1\]: duplicate sample \(seed=0, question_id='q1', sample_index=0\)"),
        ([{"question_id": "q1", "correct": True}], "need at least 2 questions for a standard error, got 1"),
    ],
)
def test_bad_records_raise_naming_the_argument(records, match):
    with pytest.raises(ConfigError, match=match):
        pass_at_1(records)


def test_bad_bootstrap_and_level_arguments():
    with pytest.raises(ConfigError, match=r"values\[1\]: expected a number or a non-empty row"):
        bootstrap_interval([[1, 0], []])
    with pytest.raises(ConfigError, match="need at least 2 questions to bootstrap, got 1"):
        bootstrap_interval([0.5])
    with pytest.raises(ConfigError, match="n_boot must be >= 2"):
        bootstrap_interval([0.5, 1.0], n_boot=1)
    with pytest.raises(ConfigError, match="level must be in"):
        pass_at_1(graded(FOUR), level=95)
    assert isinstance(pass_at_1(graded(FOUR), level=0.9), Interval)
    assert pass_at_1(graded(FOUR), level=0.9).high == pytest.approx(0.5 + 1.644854 * math.sqrt(1 / 32))
