"""Selections that re-select Standard KD's very samples instead of drawing their own: post-hoc
filtering (the lowest student PPL) and the answer-likelihood selection (the lowest NLL of the
answer line, `baselines.answer_nlls`). The comparison uses them so that those arms differ from
Standard KD in what they keep, not in what the teacher happened to sample.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from gen_ssd_dagster.core.engines.interfaces import Scorer
from gen_ssd_dagster.core.method.baselines import answer_nlls, select_lowest
from gen_ssd_dagster.core.method.config import PostHocConfig, SamplingConfig
from gen_ssd_dagster.core.types import Trajectory

ANSWER_LIKELIHOOD = "answer_likelihood"  # a selection without a method of its own: no config, no asset


def reselected(samples: list[Trajectory], method: str, scores: list[float],
               keeps: Callable[[Trajectory], bool] = SamplingConfig().keeps) -> list[Trajectory]:
    """Copies of `samples` re-selected as `method`: per problem, the one of lowest score (`scores`,
    one per sample) among those `keeps` allows (Standard KD's own rule)."""
    copies = [dataclasses.replace(t, method=method, selected=False) for t in samples]
    by_problem: dict[str, list[int]] = {}
    for i, t in enumerate(copies):
        by_problem.setdefault(t.problem_id, []).append(i)
    for rows in by_problem.values():
        select_lowest([copies[i] for i in rows], [scores[i] for i in rows], keeps)
    return copies


def posthoc_reselected(samples: list[Trajectory],
                       keeps: Callable[[Trajectory], bool] = SamplingConfig().keeps) -> list[Trajectory]:
    """Post-hoc filtering: the lowest-PPL sample per problem."""
    return reselected(samples, PostHocConfig.method, [t.ppl for t in samples], keeps)


def answer_likelihood_reselected(samples: list[Trajectory], scorer: Scorer,
                                 keeps: Callable[[Trajectory], bool] = SamplingConfig().keeps) -> list[Trajectory]:
    """MoRSD-style: per problem, the sample under which the student gives the answer line the lowest NLL."""
    return reselected(samples, ANSWER_LIKELIHOOD, answer_nlls(samples, scorer), keeps)
