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
from .core.method.config import MethodConfig, config_dict
from .core.method.registry import stream_method
from .core.types import Problem, Progress, Trajectory
from .store.db import Store
from .store.trajectories import WorkKey, done_problem_ids, write_batch


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
