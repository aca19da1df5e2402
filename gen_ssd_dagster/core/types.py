"""Plain records passed between the parts of the method: problems in, trajectories out."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

EndReason = Literal["finished", "pruned", "length_cap"]
Progress = Callable[[dict], None]  # called with a dict of numbers as work advances
Log = Callable[[str], None]  # called with one line for a person to read


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer. `problem_id` is stable across runs (the store's key)."""

    dataset: str
    problem_id: str
    question: str
    gold: str  # the gold final answer, as text (a number, or LaTeX for MATH)
    solution: str | None = None  # a worked reference solution, when the dataset has one


def problems_digest(problems: list[Problem]) -> str:
    """A short content hash of a problem set (ids, questions, golds): what a score on it depends on."""
    text = "\n".join(f"{p.problem_id}\t{p.question}\t{p.gold}" for p in problems)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def questions_digest(problems: list[Problem]) -> str:
    """A short hash of a problem set's ids and questions, golds left out: the comparison's training
    pool in its arm keys. It is older than `problems_digest` and keys stored arms, so it stays as it
    was (a pool whose golds change gets no new key)."""
    return hashlib.sha256("\n".join(p.problem_id + p.question for p in problems).encode()).hexdigest()[:16]


@dataclass
class Candidate:
    """One proposed continuation, with the student's view of it."""

    text: str
    teacher_tokens: int
    student_tokens: int
    nll: float  # summed student negative log-likelihood of `text` given the prompt and prefix
    ppl: float  # normalised as the config says ("token" or "char")
    passed: bool  # passed the suitability rule
    ends_solution: bool = False  # reached EOS or the final-answer line


@dataclass
class Step:
    candidates: list[Candidate]
    chosen: int | None  # index into candidates, None when the path was pruned here


@dataclass
class Trajectory:
    """A teacher solution as the method produced it, with everything needed to audit it."""

    dataset: str
    problem_id: str
    method: str
    sample_index: int  # which of several trajectories of one problem (baselines keep several)
    question: str
    gold: str
    text: str  # the accepted solution text (what the student trains on)
    end_reason: EndReason
    teacher_tokens: int  # every teacher token generated for this trajectory, rejected ones included
    student_tokens: int  # length of `text` under the student's tokenizer
    ppl: float | None  # the student's PPL of `text` (normalised as configured)
    predicted: str | None = None
    correct: bool | None = None
    selected: bool = False  # kept as training data by the method
    steps: list[Step] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
