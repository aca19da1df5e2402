"""Greedy, batched evaluation of a model on a benchmark: accuracy plus every graded output."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .backends import TransformersTeacher
from .grading import GRADER_VERSION, grade
from .models import ModelSpec
from .prompts import format_prompt
from .solution_text import cut_after_answer
from .types import Problem


@dataclass
class EvalResult:
    dataset: str
    n: int
    accuracy: float
    grader_version: str
    seconds: float
    outputs: list[dict] = field(default_factory=list)  # problem_id, completion, predicted, gold, correct


def evaluate(
    model: ModelSpec | str,
    problems: list[Problem],
    batch_size: int = 32,
    max_new_tokens: int = 192,
    progress: Callable[[dict], None] | None = None,
) -> EvalResult:
    """Accuracy of `model`'s greedy solutions to `problems` (all from one dataset)."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
    if not problems:
        raise ValueError("evaluate() needs at least one problem")
    # Greedy decoding through the same KV-cached sampler the teacher uses (temperature 0).
    sampler = TransformersTeacher(spec)
    started = time.perf_counter()
    outputs = []
    for start in range(0, len(problems), batch_size):
        batch = problems[start : start + batch_size]
        session = sampler.start([format_prompt(p.question) for p in batch], temperature=0.0, top_p=1.0, seed=0)
        proposals = session.propose(1, [max_new_tokens] * len(batch), stop_at_newline=False)
        for problem, props in zip(batch, proposals):
            completion = cut_after_answer(props[0].text)
            predicted, correct = grade(completion, problem.gold)
            outputs.append(
                {
                    "problem_id": problem.problem_id,
                    "completion": completion,
                    "predicted": predicted,
                    "gold": problem.gold,
                    "correct": bool(correct),
                }
            )
        if progress:
            progress({"done": len(outputs), "total": len(problems)})
    accuracy = sum(o["correct"] for o in outputs) / len(outputs)
    return EvalResult(problems[0].dataset, len(outputs), accuracy, GRADER_VERSION, time.perf_counter() - started, outputs)
