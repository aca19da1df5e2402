"""Rules that set a pruning threshold from the cold-start student's PPLs alone (docs/thresholds.md).

Each rule maps a sample of positive numbers to one threshold; calibration applies it to the
first-line PPLs (-> max_ppl) and to the later-line ratios (-> ppl_ratio).
"""

from __future__ import annotations

import math
import statistics
from typing import Literal

from gen_ssd_dagster.core.errors import ConfigError, DataError

ThresholdRule = Literal["hand", "teacher_quantile", "mode_split", "median_multiple"]
THRESHOLD_RULES: tuple[str, ...] = ("hand", "teacher_quantile", "mode_split", "median_multiple")
CalibratedRule = Literal["teacher_quantile", "mode_split", "median_multiple"]
CALIBRATED_RULES = THRESHOLD_RULES[1:]  # "hand" reads nothing
MEDIAN_MULTIPLE = 2.0  # fixed in docs/thresholds.md before any measurement


def validate_rule(rule: str) -> None:
    if rule not in THRESHOLD_RULES:
        raise ConfigError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {rule!r}")


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (linear interpolation between order statistics)."""
    import numpy as np  # here: the CLI imports this module to list the rules

    return float(np.quantile(values, q))


def mode_split(values: list[float]) -> float:
    """Otsu's cut between the two modes of log(values): the geometric mean of the two values either
    side of the cut that maximises the between-group variance (the lowest such cut on a tie)."""
    logs = sorted(math.log(v) for v in values)
    if len(set(logs)) < 2:
        raise DataError(f"mode_split needs at least two distinct values, got {len(values)} values "
                        f"with {len(set(logs))} distinct")
    n, total = len(logs), sum(logs)
    best, cut, below = -1.0, 0, 0.0
    for k in range(1, n):
        below += logs[k - 1]
        if logs[k - 1] == logs[k]:
            continue
        w0 = k / n
        between = w0 * (1 - w0) * (below / k - (total - below) / (n - k)) ** 2
        if between > best:
            best, cut = between, k
    return math.exp((logs[cut - 1] + logs[cut]) / 2)


def median_multiple(values: list[float]) -> float:
    return MEDIAN_MULTIPLE * statistics.median(values)


def threshold(rule: str, values: list[float], q: float) -> float:
    """Rule `rule`'s threshold for the sample `values` (`q`: the quantile of teacher_quantile)."""
    if rule == "teacher_quantile":
        return quantile(values, q)
    if rule == "mode_split":
        return mode_split(values)
    if rule == "median_multiple":
        return median_multiple(values)
    raise ConfigError(f"threshold_rule {rule!r} computes no threshold; one of {CALIBRATED_RULES} does")
