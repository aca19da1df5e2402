"""Batched evaluation of a model on a benchmark: n graded answers per question, greedy or sampled.

`EvalSettings` holds what the score depends on (samples per question, temperature, top-p, length
cap, seed): it is recorded with every score and hashed into its key. pass@1 is the mean over
questions of each question's share of correct samples; with `maj_k`, maj@k is reported as well
(`core.evaluation.statistics` computes both, with intervals, from the stored outputs).

With a `ledger` (e.g. `store.eval_outputs.EvalLedger`, in DuckDB) every finished batch is recorded
as it completes and batches already recorded are not generated again, so an evaluation killed in
its third hour restarts where it stopped. Batches keep their boundaries and their seeds, so a
resumed evaluation decodes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

from gen_ssd_dagster.core.engines.transformers_backend import TransformersTeacher
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.data.grading import GRADER_VERSION, grade
from gen_ssd_dagster.core.batching import batches
from gen_ssd_dagster.core.engines.interfaces import check_sampling
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.data.solution_text import SolutionEnd
from gen_ssd_dagster.core.types import Problem, Progress


@dataclass(frozen=True)
class EvalSettings:
    """How each question is answered when a student is scored.

    samples: answers per question; pass@1 is their mean (e.g. 4 on MATH-500, 16-64 on AIME).
    temperature / top_p: sampling of each answer; temperature 0 is greedy (then samples must be 1).
    max_new_tokens: length cap of one answer, in the model's tokens.
    maj_k: also report maj@k, the majority answer of the first k samples (needs samples >= k).
    seed: seeds the sampling; batch b uses seed + its first question's index, so a resumed
        evaluation samples what an uninterrupted one does.
    """

    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 192
    maj_k: int | None = None
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> None:
        check_sampling(self.temperature, self.top_p, self.max_new_tokens, self.samples, "samples", "evaluation ")
        if self.maj_k is not None and not 1 <= self.maj_k <= self.samples:
            raise ConfigError(f"evaluation maj_k must be between 1 and samples ({self.samples}), got {self.maj_k}")

    def record(self) -> dict:
        return asdict(self)

    def key(self) -> dict:
        """The settings that change the outputs, for score keys. Greedy single answers key as they did
        before samples existed ({"max_new_tokens": ...}), so stored greedy work is still found."""
        if self.greedy and self.samples == 1:
            return {"max_new_tokens": self.max_new_tokens}
        return {k: v for k, v in self.record().items() if k != "maj_k"}  # maj@k is recomputed from the outputs


@dataclass
class EvalResult:
    dataset: str
    n: int  # questions
    accuracy: float  # pass@1: mean over questions of the share of correct samples
    grader_version: str
    seconds: float
    # One per (question, sample): problem_id, sample_index, completion, predicted, gold, correct, ended, tokens.
    outputs: list[dict] = field(default_factory=list)
    reused: int = 0  # questions whose outputs were taken from the ledger rather than generated now
    settings: EvalSettings = EvalSettings()

    @property
    def n_correct(self) -> int:
        """Correct samples (over all questions and samples)."""
        return sum(bool(o["correct"]) for o in self.outputs)


class Ledger(Protocol):
    """Where finished batches are kept (see store.eval_outputs.EvalLedger)."""

    def done(self, problems: list[Problem]) -> dict[str, list[dict]]: ...
    def record(self, problems: list[Problem], outputs: list[dict]) -> None: ...


def evaluate(
    model: ModelSpec | str,
    problems: list[Problem],
    settings: EvalSettings = EvalSettings(),
    batch_size: int = 32,
    progress: Progress | None = None,
    ledger: Ledger | None = None,
    solution_end: SolutionEnd = SolutionEnd(),
    engine: Callable[[ModelSpec], object] | None = None,
) -> EvalResult:
    """pass@1 of `model` on `problems` (all from one dataset), from `settings.samples` answers each.

    Each question is prompted through the model's own format (its chat template, or the plain
    one: `ModelSpec.chat_template`); an answer ends at the model's end of turn, at `solution_end`'s
    marker, or at `settings.max_new_tokens`. `engine` builds the sampler from the spec (any teacher
    backend: `VLLMTeacher` for the vLLM engine); default the transformers KV-cached sampler."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
    if not problems:
        raise ValueError("evaluate() needs at least one problem")
    settings.validate()
    if batch_size < 1:
        raise ConfigError(f"evaluation batch_size must be >= 1, got {batch_size}")
    n = settings.samples
    done = ledger.done(problems) if ledger else {}
    sampler = None  # loaded only when some batch is missing
    started = time.perf_counter()
    outputs, reused, answered = [], 0, 0
    for _, batch, seed in batches(problems, batch_size, settings.seed):
        if all(len(done.get(p.problem_id, ())) == n for p in batch):
            outputs += [o for p in batch for o in done[p.problem_id]]
            reused += len(batch)
            answered += len(batch)
            continue
        if sampler is None:  # decoding through a teacher backend: the same sampler the teacher uses
            sampler = (engine or TransformersTeacher)(spec)
        session = sampler.start([p.question for p in batch], temperature=settings.temperature,
                                top_p=settings.top_p, seed=seed)
        proposals = session.propose(n, [settings.max_new_tokens] * len(batch), stop_at_newline=False)
        new = [_graded(problem, i, prop, solution_end)
               for problem, props in zip(batch, proposals) for i, prop in enumerate(props)]
        if ledger:
            ledger.record(batch, new)
        outputs += new
        answered += len(batch)
        if progress:
            progress({"done": answered, "total": len(problems)})
    accuracy = sum(o["correct"] for o in outputs) / len(outputs)  # equal samples per question: = pass@1
    return EvalResult(problems[0].dataset, answered, accuracy, GRADER_VERSION, time.perf_counter() - started,
                      outputs, reused, settings)


def _graded(problem: Problem, sample_index: int, proposal, solution_end: SolutionEnd) -> dict:
    completion = solution_end.cut(proposal.text)
    predicted, correct = grade(completion, problem.gold)
    return {
        "problem_id": problem.problem_id,
        "sample_index": sample_index,
        "completion": completion,
        "predicted": predicted,
        "gold": problem.gold,
        "correct": bool(correct),
        # How the answer ended, and its length (kept by the ledger too).
        "ended": proposal.ended or solution_end.ends(proposal.text),
        "tokens": proposal.tokens,
    }
