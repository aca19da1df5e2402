"""Run a method over problems, committing finished problems in groups, skipping what is already
stored: the one place the core's algorithm meets the store (the store itself only reads and writes).

Problems are committed `batch_size` at a time as they finish (Gen-SSD's paths finish in any order:
a path that ends gives its slot to the next problem at once). A crash loses at most the problems
in flight and those finished since the last commit; re-running with the same key (dataset, method,
teacher version, scorer version, config hash) redoes nothing that was committed. Every problem is
seeded by its own id (`seeding.problem_seed`), so a resumed run draws what a clean one does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .core.errors import ConfigError, GenSSDError
from .core.experiments.budget import BudgetMeter
from .core.method.config import MethodConfig, config_dict
from .core.method.registry import stream_method
from .core.types import Problem, Progress, Trajectory
from .store.db import Store
from .store.trajectories import WorkKey, done_problem_ids, problem_costs, write_batch


@dataclass
class ResumeReport:
    total: int  # problems asked for
    reused: int  # already stored under the same key
    generated: int  # problems generated now
    trajectories_written: int
    batches: int  # commits


def prompt_records(teacher, scorer) -> dict:
    """How the teacher and the student scorer turn a question into a prompt (template, instruction,
    system prompt), for backends that say (`prompter`)."""
    return {who: model.prompter.record() for who, model in (("teacher", teacher), ("student", scorer))
            if getattr(model, "prompter", None) is not None}


def run_resumable(store: Store, key: WorkKey, config: MethodConfig, problems: list[Problem], teacher, scorer,
                  batch_size: int = 16, run_id: str | None = None,
                  progress: Progress | None = None) -> ResumeReport:
    """Run `config`'s method on the problems not stored under `key`, `batch_size` in flight, committed
    `batch_size` at a time. `progress` gets {"done", "total"} (problems stored, reused ones
    included) after each commit."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    done = done_problem_ids(store, key)
    todo = [p for p in problems if p.problem_id not in done]
    report = ResumeReport(total=len(problems), reused=len(problems) - len(todo), generated=0,
                          trajectories_written=0, batches=0)
    # Stored under the key of the run's config, with how each model was prompted (the instruction's
    # text; its hash is in the versions of the key).
    stored = {**config_dict(config), "prompts": prompt_records(teacher, scorer)}
    finished: list[tuple[Problem, list[Trajectory]]] = []

    def commit() -> None:
        report.trajectories_written += write_batch(store, key, [p.problem_id for p, _ in finished],
                                                   [t for _, ts in finished for t in ts], stored, run_id)
        report.generated += len(finished)
        report.batches += 1
        finished.clear()
        if progress:
            progress({"done": report.generated + report.reused, "total": len(problems)})

    stream = stream_method(config, todo, teacher, scorer, batch_size)
    while True:
        try:
            item = next(stream, None)
        except BaseException as exc:  # what finished before the failure is kept (an interrupt too)
            if finished:
                commit()
            if isinstance(exc, GenSSDError):  # bad input: say where
                raise type(exc)(f"{key.method}/{key.dataset}, {exc}") from exc
            raise
        if item is None:
            break
        finished.append(item)
        if len(finished) >= batch_size:
            commit()
    if finished:
        commit()
    return report


@dataclass
class BudgetReport:
    """What a teacher-token budget bought (`run_within_budget`)."""

    budget: int
    spent: int  # teacher tokens of the problems within the budget
    problem_ids: list[str]  # those problems, in the stream's order
    pool_exhausted: bool  # every problem fit: the budget was not reached
    resume: ResumeReport  # problems generated now (the last slice's overshoot too) and stored ones counted


def run_within_budget(store: Store, key: WorkKey, config: MethodConfig, stream: list[Problem], teacher, scorer,
                      budget: int, batch_size: int = 16, run_id: str | None = None,
                      progress: Progress | None = None, log=None) -> BudgetReport:
    """`run_resumable` over `stream` (problems in the seed's order) a slice at a time, until the
    problems within `budget` teacher tokens are known (the rule of core/experiments/budget.py).
    Each slice is what the rest of the budget buys at the mean cost so far, so generation stops
    at most about one slice's spread past the budget; stored problems cost nothing to count."""
    meter = BudgetMeter(budget)
    total = ResumeReport(total=0, reused=0, generated=0, trajectories_written=0, batches=0)
    stored_before = set(problem_costs(store, key))
    taken: list[str] = []
    position, generated_at = 0, None  # stream[:position] is metered
    while position < len(stream) and not meter.closed:
        costs = problem_costs(store, key)
        if generated_at == position and stream[position].problem_id not in costs:
            raise GenSSDError(f"{key.method}/{key.dataset}: problem {stream[position].problem_id} was generated "
                              "but is not stored under the work key")
        while position < len(stream) and stream[position].problem_id in costs:
            pid = stream[position].problem_id
            if not meter.take(costs[pid]):
                break
            taken.append(pid)
            position += 1
        if meter.closed or position == len(stream):
            break
        part, generated_at = stream[position:position + meter.problems_left(batch_size)], position
        report = run_resumable(store, key, config, part, teacher, scorer, batch_size, run_id, progress)
        for name in ("generated", "trajectories_written", "batches"):
            setattr(total, name, getattr(total, name) + getattr(report, name))
        if log:
            log(f"{key.method}/{key.dataset}: {meter.taken} problems within the budget so far, "
                f"{meter.spent}/{budget} teacher tokens")
    # reused: the stored problems the meter counted (the one that closed the budget too)
    total.reused = len(stored_before.intersection(p.problem_id for p in stream[:position + meter.closed]))
    total.total = total.reused + total.generated
    return BudgetReport(budget, meter.spent, taken, not meter.closed, total)
