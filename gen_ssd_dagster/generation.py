"""Run a method over problems in batches, committing each batch, skipping what is already stored:
the one place the core's algorithm meets the store (the store itself only reads and writes).

A crash loses at most the batch in flight; re-running with the same key (dataset, method, teacher
version, scorer version, config hash) redoes nothing that finished. Each batch keeps the seed it
would have had in one uninterrupted `run_method` call (seed + offset of the batch), so a resumed
run draws the same samples as a clean one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .core.batching import batches
from .core.errors import ConfigError, GenSSDError
from .core.method.config import MethodConfig, config_dict
from .core.method.registry import run_method
from .core.types import Problem, Progress
from .store.db import Store
from .store.trajectories import WorkKey, done_problem_ids, write_batch


@dataclass
class ResumeReport:
    total: int  # problems asked for
    reused: int  # already stored under the same key
    generated: int  # problems generated now
    trajectories_written: int
    batches: int


def prompt_records(teacher, scorer) -> dict:
    """How the teacher and the student scorer turn a question into a prompt (template, instruction,
    system prompt), for backends that say (`prompter`)."""
    return {who: model.prompter.record() for who, model in (("teacher", teacher), ("student", scorer))
            if getattr(model, "prompter", None) is not None}


def run_resumable(store: Store, key: WorkKey, config: MethodConfig, problems: list[Problem], teacher, scorer,
                  batch_size: int = 16, run_id: str | None = None,
                  progress: Progress | None = None) -> ResumeReport:
    """Run `config`'s method on the problems not stored under `key`, one committed batch at a time.
    `progress` gets {"done", "total"} (problems stored, reused ones included) after each batch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    done = done_problem_ids(store, key)
    report = ResumeReport(total=len(problems), reused=sum(p.problem_id in done for p in problems),
                          generated=0, trajectories_written=0, batches=0)
    for _, batch, seed in batches(problems, batch_size, config.sampling.seed):
        todo = [p for p in batch if p.problem_id not in done]
        if not todo:
            continue
        sampling = dataclasses.replace(config.sampling, seed=seed)
        try:
            trajectories = run_method(dataclasses.replace(config, sampling=sampling), todo, teacher, scorer,
                                      batch_size=batch_size)
        except GenSSDError as exc:  # bad input in this batch: say which problems (earlier batches are kept)
            ids = ", ".join(p.problem_id for p in todo)
            raise type(exc)(f"{key.method}/{key.dataset}, batch of problems [{ids}]: {exc}") from exc
        # Stored under the key of the run's config (its seed is the base seed, not the batch's), with
        # how each model was prompted (the instruction's text; its hash is in the versions of the key).
        stored = {**config_dict(config), "prompts": prompt_records(teacher, scorer)}
        report.trajectories_written += write_batch(store, key, [p.problem_id for p in todo], trajectories,
                                                   stored, run_id)
        report.generated += len(todo)
        report.batches += 1
        if progress:
            progress({"done": report.generated + report.reused, "total": len(problems)})
    return report
