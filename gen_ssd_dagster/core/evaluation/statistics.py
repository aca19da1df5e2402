"""Accuracy with error bars: pass@1, pass@k, maj@k and paired A − B differences, clustered by question.

A benchmark score is a mean over a *sample* of questions, so it has sampling error. It is reported here the way
lm-evaluation-harness, lighteval and open-r1 do (mean over questions; SE = sd with n − 1, over √n) and as Miller,
"Adding Error Bars to Evals" (arXiv 2411.00640) recommends: the question is the cluster (several samples of one
question are not independent evidence) and two models are compared on the same questions, paired.

Input: graded samples, one mapping each: question_id (str), seed (int: training seed or replicate, default 0),
sample_index (int, default 0), correct (bool) and, for maj@k only, predicted (str | None).

Seeds: a question's score is the mean over its seeds of the per-seed score, so each question is one cluster
whatever the number of seeds. The clustered SE thus treats the trained models as fixed: it measures test-question
and sampling noise only. How much a new training seed would move a result is what `variance_components` estimates.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gen_ssd_dagster.core.errors import ConfigError

Cells = dict[tuple[int, str], list[tuple[int, bool, object]]]  # (seed, question) -> (sample_index, correct, predicted)


@dataclass(frozen=True)
class Interval:
    """An estimate, its standard error and confidence interval, and what it was computed over."""

    estimate: float
    stderr: float
    low: float
    high: float
    n_questions: int
    n_seeds: int
    method: str

    def fmt(self, scale: float = 100, digits: int = 1) -> str:
        """'42.5 ± 3.1'. The ± is the larger side of the interval, so clipping at 0 or 1 never shrinks it."""
        half = max(self.estimate - self.low, self.high - self.estimate)
        return f"{self.estimate * scale:.{digits}f} ± {half * scale:.{digits}f}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def _int(value, what: str) -> int:
    try:
        if not isinstance(value, bool):
            return operator.index(value)  # numpy integers too
    except TypeError:
        pass
    raise ConfigError(f"{what} must be an int, got {value!r}")


def _cells(records: Iterable[Mapping], name: str) -> Cells:
    """Validate graded samples and group them by (seed, question), each group in sample_index order."""
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise ConfigError(f"{name}: expected an iterable of mappings, one per graded sample; "
                          f"got {type(records).__name__}")
    cells: Cells = defaultdict(list)
    seen = set()
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ConfigError(f"{name}[{i}]: expected a mapping, got {type(r).__name__}")
        q, ok = r.get("question_id"), r.get("correct")
        if not isinstance(q, str) or not q:
            raise ConfigError(f"{name}[{i}]: question_id must be a non-empty str, got {q!r}")
        seed = _int(r.get("seed", 0), f"{name}[{i}].seed")
        index = _int(r.get("sample_index", 0), f"{name}[{i}].sample_index")
        if ok is None or isinstance(ok, str) or ok not in (0, 1):
            raise ConfigError(f"{name}[{i}]: correct must be a bool, got {ok!r}")
        if (seed, q, index) in seen:
            raise ConfigError(f"{name}[{i}]: duplicate sample (seed={seed}, question_id={q!r}, sample_index={index})")
        seen.add((seed, q, index))
        cells[seed, q].append((index, bool(ok), r.get("predicted")))
    if not cells:
        raise ConfigError(f"{name}: no records; need graded samples of at least 2 questions")
    for samples in cells.values():
        samples.sort(key=lambda s: s[0])
    return dict(cells)


def _per_question(cells: Cells, score: Callable[[list, str], float]) -> dict[str, float]:
    """Each question's score: the mean over its seeds of score(that seed's samples)."""
    by_q: dict[str, list[float]] = defaultdict(list)
    for (seed, q), samples in cells.items():
        by_q[q].append(score(samples, f"question {q!r} (seed {seed})"))
    return {q: statistics.fmean(v) for q, v in by_q.items()}


def _accuracy(samples: list, where: str = "") -> float:
    return statistics.fmean(ok for _, ok, _ in samples)


def _clustered(values: list[float], cells: Cells, what: str, level: float, bounds=(0.0, 1.0)) -> Interval:
    """Mean of per-question values, SE = sd(ddof=1)/√Q, normal interval clipped to bounds."""
    if len(values) < 2:
        raise ConfigError(f"{what}: need at least 2 questions for a standard error, got {len(values)}")
    z, est, se = _z(level), statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    return Interval(est, se, max(bounds[0], est - z * se), min(bounds[1], est + z * se), len(values),
                    len({s for s, _ in cells}), f"{what}; clustered SE over questions, normal {level:.0%}")


def _check_k(k, samples: list | None = None, where: str = "") -> int:
    k = _int(k, "k")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if samples is not None and k > len(samples):
        raise ConfigError(f"k={k} is larger than the {len(samples)} samples of {where}")
    return k


def per_question_means(records: Iterable[Mapping]) -> dict[str, float]:
    """pass@1 of each question (mean correctness over its seeds and samples), e.g. to bootstrap."""
    return _per_question(_cells(records, "records"), _accuracy)


def pass_at_1(records: Iterable[Mapping], level: float = 0.95) -> Interval:
    """Mean over questions of each question's mean correctness (greedy decoding: one sample)."""
    cells = _cells(records, "records")
    return _clustered(list(_per_question(cells, _accuracy).values()), cells, "pass@1", level)


def pass_at_k(records: Iterable[Mapping], k: int, level: float = 0.95) -> Interval:
    """Unbiased pass@k of Chen et al. (2021): 1 − C(n−c, k)/C(n, k) per question (n ≥ k samples, c correct)."""
    k = _check_k(k)

    def score(samples: list, where: str) -> float:
        n, c = len(samples), sum(ok for _, ok, _ in samples)
        _check_k(k, samples, where)
        return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact integers: no overflow

    cells = _cells(records, "records")
    return _clustered(list(_per_question(cells, score).values()), cells, f"pass@{k}", level)


def maj_at_k(records: Iterable[Mapping], k: int, level: float = 0.95) -> Interval:
    """Majority vote over the first k samples (by sample_index) of each question.

    None (no answer extracted) never wins and a tie goes to the answer seen first. The vote is correct if the first
    sample giving the winning answer was graded correct; a question with no answer at all counts as wrong."""
    k = _check_k(k)

    def score(samples: list, where: str) -> float:
        first = samples[:_check_k(k, samples, where)]
        votes = Counter(p for _, _, p in first if p is not None)
        top = max(votes.values(), default=0)
        return next((float(ok) for _, ok, p in first if p is not None and votes[p] == top), 0.0)

    cells = _cells(records, "records")
    return _clustered(list(_per_question(cells, score).values()), cells, f"maj@{k}", level)


def _some(ids: set, name: str) -> str:
    return f"{len(ids)} only in {name}" + (f" (e.g. {', '.join(map(repr, sorted(ids)[:3]))})" if ids else "")


def _paired(records_a: Iterable[Mapping], records_b: Iterable[Mapping]) -> tuple[Cells, Cells]:
    """Both runs' cells, after checking that they cover the same (seed, question) pairs."""
    ca, cb = _cells(records_a, "records_a"), _cells(records_b, "records_b")
    qa, qb = {q for _, q in ca}, {q for _, q in cb}
    if qa != qb:
        raise ConfigError(f"records_a and records_b must cover the same questions: {_some(qa - qb, 'records_a')}, "
                          f"{_some(qb - qa, 'records_b')}")
    sa, sb = {s for s, _ in ca}, {s for s, _ in cb}
    if sa != sb:
        raise ConfigError(f"records_a and records_b must have the same seeds: records_a has {sorted(sa)}, "
                          f"records_b has {sorted(sb)}")
    if ca.keys() != cb.keys():
        odd = sorted(ca.keys() ^ cb.keys())
        raise ConfigError(f"records_a and records_b must have the same (seed, question) pairs; {len(odd)} are in "
                          f"only one of them, e.g. {odd[:3]}")
    return ca, cb


def _differences(ca: Cells, cb: Cells) -> dict[str, float]:
    ma, mb = _per_question(ca, _accuracy), _per_question(cb, _accuracy)
    return {q: ma[q] - mb[q] for q in ma}


def paired_question_differences(records_a: Iterable[Mapping], records_b: Iterable[Mapping]) -> dict[str, float]:
    """d_q = pass@1_A(q) − pass@1_B(q) for each question, e.g. to bootstrap the paired difference."""
    return _differences(*_paired(records_a, records_b))


def paired_difference(records_a: Iterable[Mapping], records_b: Iterable[Mapping], level: float = 0.95) -> Interval:
    """pass@1 of A − B on the same questions (and seeds): mean of d_q, SE = sd(d_q)/√Q.

    Pairing removes the question-difficulty variance both models share, so this SE is usually far below the unpaired
    √(SE_A² + SE_B²). It treats the trained models as fixed; `variance_components` adds the training-seed part."""
    ca, cb = _paired(records_a, records_b)
    return _clustered(list(_differences(ca, cb).values()), ca, "pass@1 A − B, paired by question", level, (-1.0, 1.0))


def seed_differences(records_a: Iterable[Mapping], records_b: Iterable[Mapping]) -> list[tuple[int, float]]:
    """(seed, mean over that seed's questions of pass@1_A − pass@1_B), in seed order: one point per seed."""
    ca, cb = _paired(records_a, records_b)
    by_seed: dict[int, list[float]] = defaultdict(list)
    for key in ca:
        by_seed[key[0]].append(_accuracy(ca[key]) - _accuracy(cb[key]))
    return [(s, statistics.fmean(v)) for s, v in sorted(by_seed.items())]


@dataclass(frozen=True)
class VarianceComponents:
    """Where the spread of the per-seed paired differences comes from (variances of pass@1 A − B, as fractions).

    Two-way random-effects model on the S × Q grid of per-(seed, question) differences:
    d_sq = μ + τ_s + δ_q + ε_sq, with the seed effect τ (variance σ²_τ), the question effect δ (σ²_δ) and noise ε
    (σ²_ε: seed × question interaction and sampling). With D_s = mean_q d_sq and MS_resid the two-way ANOVA residual
    mean square, Σ (d_sq − D_s − mean_s d_sq + mean D)² / ((S − 1)(Q − 1)):
      between_seed_var   = var_s(D_s)                      E = σ²_τ + σ²_ε/Q    (the spread of seed_differences)
      within_seed_var    = mean_s var_q(d_sq) / Q          E = (σ²_δ + σ²_ε)/Q  (one seed's clustered SE²)
      noise_var          = MS_resid / Q                    E = σ²_ε/Q           (the spread with no seed effect)
      seed_var           = max(0, between − noise)         estimates σ²_τ, the training-seed variance
      question_var       = var_q(mean_s d_sq) / Q          = paired_difference(...).stderr²
      single_seed_stderr = √(seed_var + within_seed_var)   one seed's difference: new seed and new questions
      mean_stderr        = √(seed_var / S + question_var)  the S-seed mean difference: seeds and questions random
    """

    n_seeds: int
    n_questions: int
    per_seed: tuple[tuple[int, float], ...]
    between_seed_var: float
    within_seed_var: float
    noise_var: float
    seed_var: float
    question_var: float
    single_seed_stderr: float
    mean_stderr: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def variance_components(records_a: Iterable[Mapping], records_b: Iterable[Mapping]) -> VarianceComponents:
    """Split the variance of the A − B difference into its training-seed and test-question parts (see the class).

    Needs at least 2 seeds and 2 questions, and every seed evaluated on every question."""
    ca, cb = _paired(records_a, records_b)
    seeds, qs = sorted({s for s, _ in ca}), sorted({q for _, q in ca})
    S, Q = len(seeds), len(qs)
    if S < 2 or Q < 2:
        raise ConfigError(f"variance_components needs at least 2 seeds and 2 questions, got {S} and {Q}")
    if len(ca) != S * Q:
        raise ConfigError(f"variance_components needs every seed evaluated on every question: "
                          f"{S * Q - len(ca)} of the {S * Q} (seed, question) pairs are missing")
    d = {key: _accuracy(ca[key]) - _accuracy(cb[key]) for key in ca}
    per_seed = [statistics.fmean(d[s, q] for q in qs) for s in seeds]
    per_q = [statistics.fmean(d[s, q] for s in seeds) for q in qs]
    grand = statistics.fmean(per_seed)
    between = statistics.variance(per_seed)
    within = statistics.fmean(statistics.variance([d[s, q] for q in qs]) / Q for s in seeds)
    ms_resid = sum((d[s, q] - per_seed[i] - per_q[j] + grand) ** 2
                   for i, s in enumerate(seeds) for j, q in enumerate(qs)) / ((S - 1) * (Q - 1))
    seed_var, question_var = max(0.0, between - ms_resid / Q), statistics.variance(per_q) / Q
    return VarianceComponents(S, Q, tuple(zip(seeds, per_seed)), between, within, ms_resid / Q, seed_var,
                              question_var, math.sqrt(seed_var + within), math.sqrt(seed_var / S + question_var))


def bootstrap_interval(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95, n_seeds: int = 1) -> Interval:
    """Percentile bootstrap over questions: a check on the normal interval that does not assume normality.

    values: one number per question (a list, or the dict of `per_question_means` / `paired_question_differences`),
    or one row of numbers per question (each row is averaged). n_seeds is only recorded in the result."""
    import numpy as np

    rows = []
    for i, v in enumerate(values.values() if isinstance(values, Mapping) else values):
        try:
            rows.append(statistics.fmean(map(float, v)) if isinstance(v, Iterable) else float(v))
        except (TypeError, ValueError, statistics.StatisticsError):
            raise ConfigError(f"values[{i}]: expected a number or a non-empty row of numbers, got {v!r}") from None
    if len(rows) < 2:
        raise ConfigError(f"values: need at least 2 questions to bootstrap, got {len(rows)}")
    if (n_boot := _int(n_boot, "n_boot")) < 2:
        raise ConfigError(f"n_boot must be >= 2, got {n_boot}")
    _z(level)
    x, rng, boot = np.asarray(rows), np.random.default_rng(seed), []
    chunk = max(1, 2**20 // len(x))  # resample in chunks: bounded memory for large question sets
    for start in range(0, n_boot, chunk):
        boot.append(x[rng.integers(0, len(x), size=(min(chunk, n_boot - start), len(x)))].mean(axis=1))
    boot = np.concatenate(boot)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(x.mean()), float(boot.std(ddof=1)), float(low), float(high), len(x), n_seeds,
                    f"percentile bootstrap over questions, {n_boot} resamples, {level:.0%}")
