"""One entry point for every method, so callers (the demo, Dagster assets) need not branch."""

from __future__ import annotations

from gen_ssd_dagster.core.engines.interfaces import Scorer, Teacher
from gen_ssd_dagster.core.method.baselines import run_posthoc, run_standard_kd
from gen_ssd_dagster.core.method.config import GenSSDConfig, MethodConfig, PostHocConfig, StandardKDConfig
from gen_ssd_dagster.core.method.selection import run_gen_ssd
from gen_ssd_dagster.core.types import Problem, Progress, Trajectory

# Every method, in the one order used wherever methods are listed (the comparison adds its
# answer-likelihood selection after them; core/method/versions.py has one version per name).
METHODS = ("gen_ssd", "standard_kd", "posthoc")


def run_method(
    config: MethodConfig,
    problems: list[Problem],
    teacher: Teacher,
    scorer: Scorer,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[Trajectory]:
    """Trajectories of `problems` by the method `config` describes; `.selected` marks training data."""
    if isinstance(config, GenSSDConfig):
        return run_gen_ssd(problems, teacher, scorer, config, batch_size, progress)
    if isinstance(config, StandardKDConfig):
        return run_standard_kd(problems, teacher, scorer, config, batch_size, progress)
    if isinstance(config, PostHocConfig):
        return run_posthoc(problems, teacher, scorer, config, batch_size, progress)
    raise TypeError(f"not a method config: {type(config).__name__}")


def training_examples(trajectories: list[Trajectory]) -> list[tuple[str, str]]:
    """(question, solution) pairs from the trajectories a method selected; the trainer prompts
    each question through the student's own format."""
    return [(t.question, t.text) for t in trajectories if t.selected]
