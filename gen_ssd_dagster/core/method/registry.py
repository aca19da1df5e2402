"""One entry point for every method, so callers (the demo, Dagster assets) need not branch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gen_ssd_dagster.core.engines.interfaces import Scorer, Teacher
from gen_ssd_dagster.core.errors import GenSSDError
from gen_ssd_dagster.core.method.config import GenSSDConfig, MethodConfig
from gen_ssd_dagster.core.method.methods import METHODS, Method
from gen_ssd_dagster.core.types import Problem, Progress, Trajectory


def _method(config: MethodConfig) -> Method:
    method = METHODS.get(getattr(config, "method", None))
    if method is None or not isinstance(config, method.config_class):
        raise TypeError(f"not a method config: {type(config).__name__}")
    return method


def run_method(
    config: MethodConfig,
    problems: list[Problem],
    teacher: Teacher,
    scorer: Scorer,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[Trajectory]:
    """Trajectories of `problems` by the method `config` describes; `.selected` marks training data."""
    return _method(config).run(problems, teacher, scorer, config, batch_size, progress)


def stream_method(config: MethodConfig, problems: list[Problem], teacher: Teacher, scorer: Scorer,
                  batch_size: int = 16) -> Iterator[tuple[Problem, list[Trajectory]]]:
    """(problem, its trajectories) as each problem is done, in the order they finish: Gen-SSD's
    paths with `batch_size` in flight (`selection.iter_gen_ssd`), the baselines' in batches. Every
    method seeds each problem by its id, so what a problem gets does not depend on the others.
    A bad problem fails naming the problems it was started with."""
    _method(config)
    if isinstance(config, GenSSDConfig):
        from gen_ssd_dagster.core.method.selection import iter_gen_ssd

        for index, trajectory in iter_gen_ssd(problems, teacher, scorer, config, batch_size):
            yield problems[index], [trajectory]
        return
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        with naming_problems(batch):
            trajectories = run_method(config, batch, teacher, scorer, batch_size)
        for problem in batch:
            yield problem, [t for t in trajectories if t.problem_id == problem.problem_id]


@contextmanager
def naming_problems(problems: list[Problem]):
    """Re-raise a GenSSDError (bad input) with the ids of the problems it came from."""
    try:
        yield
    except GenSSDError as exc:
        ids = ", ".join(p.problem_id for p in problems)
        raise type(exc)(f"batch of problems [{ids}]: {exc}") from exc


def training_examples(trajectories: list[Trajectory]) -> list[tuple[str, str]]:
    """(question, solution) pairs from the trajectories a method selected; the trainer prompts
    each question through the student's own format."""
    return [(t.question, t.text) for t in trajectories if t.selected]
