"""Greedy, batched evaluation of a model on a benchmark: accuracy plus every graded output.

With a `ledger` (e.g. `store.eval_outputs.EvalLedger`, in DuckDB) every finished batch is recorded
as it completes and batches already recorded are not generated again, so an evaluation killed in
its third hour restarts where it stopped. Batches keep their boundaries, so a resumed evaluation
decodes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .backends import TransformersTeacher
from .errors import ConfigError
from .grading import GRADER_VERSION, grade
from .models import ModelSpec
from .solution_text import SolutionEnd
from .types import Problem


@dataclass
class EvalResult:
    dataset: str
    n: int
    accuracy: float
    grader_version: str
    seconds: float
    outputs: list[dict] = field(default_factory=list)  # problem_id, completion, predicted, gold, correct, ended, tokens
    reused: int = 0  # outputs taken from the ledger rather than generated now


class Ledger(Protocol):
    """Where finished batches are kept (see store.eval_outputs.EvalLedger)."""

    def done(self, problems: list[Problem]) -> dict[str, dict]: ...
    def record(self, problems: list[Problem], outputs: list[dict]) -> None: ...


def evaluate(
    model: ModelSpec | str,
    problems: list[Problem],
    batch_size: int = 32,
    max_new_tokens: int = 192,
    progress: Callable[[dict], None] | None = None,
    ledger: Ledger | None = None,
    solution_end: SolutionEnd = SolutionEnd(),
    engine: Callable[[ModelSpec], object] | None = None,
) -> EvalResult:
    """Accuracy of `model`'s greedy solutions to `problems` (all from one dataset).

    Each question is prompted through the model's own format (its chat template, or the plain
    one: `ModelSpec.chat_template`); a solution ends at the model's end of turn, at `solution_end`'s
    marker, or at `max_new_tokens`. `engine` builds the sampler from the spec (any teacher
    backend: `VLLMTeacher` for the vLLM engine); default the transformers KV-cached sampler."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
    if not problems:
        raise ValueError("evaluate() needs at least one problem")
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"evaluation batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    done = ledger.done(problems) if ledger else {}
    sampler = None  # loaded only when some batch is missing
    started = time.perf_counter()
    outputs, reused = [], 0
    for start in range(0, len(problems), batch_size):
        batch = problems[start : start + batch_size]
        if all(p.problem_id in done for p in batch):
            outputs += [done[p.problem_id] for p in batch]
            reused += len(batch)
            continue
        if sampler is None:  # greedy decoding through a teacher backend: the same sampler the teacher uses
            sampler = (engine or TransformersTeacher)(spec)
        session = sampler.start([p.question for p in batch], temperature=0.0, top_p=1.0, seed=0)
        proposals = session.propose(1, [max_new_tokens] * len(batch), stop_at_newline=False)
        new = []
        for problem, props in zip(batch, proposals):
            completion = solution_end.cut(props[0].text)
            predicted, correct = grade(completion, problem.gold)
            new.append(
                {
                    "problem_id": problem.problem_id,
                    "completion": completion,
                    "predicted": predicted,
                    "gold": problem.gold,
                    "correct": bool(correct),
                    # How the answer ended, and its length (kept by the ledger too).
                    "ended": props[0].ended or solution_end.ends(props[0].text),
                    "tokens": props[0].tokens,
                }
            )
        if ledger:
            ledger.record(batch, new)
        outputs += new
        if progress:
            progress({"done": len(outputs), "total": len(problems)})
    accuracy = sum(o["correct"] for o in outputs) / len(outputs)
    return EvalResult(problems[0].dataset, len(outputs), accuracy, GRADER_VERSION, time.perf_counter() - started,
                      outputs, reused)
