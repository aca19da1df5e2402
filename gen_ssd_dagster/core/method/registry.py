"""One entry point for every method, so callers (the demo, Dagster assets) need not branch."""

from __future__ import annotations

from gen_ssd_dagster.core.engines.interfaces import Scorer, Teacher
from gen_ssd_dagster.core.method.config import MethodConfig
from gen_ssd_dagster.core.method.methods import METHODS
from gen_ssd_dagster.core.types import Problem, Progress, Trajectory


def run_method(
    config: MethodConfig,
    problems: list[Problem],
    teacher: Teacher,
    scorer: Scorer,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[Trajectory]:
    """Trajectories of `problems` by the method `config` describes; `.selected` marks training data."""
    method = METHODS.get(getattr(config, "method", None))
    if method is None or not isinstance(config, method.config_class):
        raise TypeError(f"not a method config: {type(config).__name__}")
    return method.run(problems, teacher, scorer, config, batch_size, progress)


def training_examples(trajectories: list[Trajectory]) -> list[tuple[str, str]]:
    """(question, solution) pairs from the trajectories a method selected; the trainer prompts
    each question through the student's own format."""
    return [(t.question, t.text) for t in trajectories if t.selected]
