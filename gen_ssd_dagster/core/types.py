"""Plain records passed between the parts of the method: problems in, trajectories out, and the
result of one arm of an experiment."""

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


@dataclass
class ArmResult:
    """One arm: what its data cost and looked like, and how well its student did."""

    kind: str  # comparison | sweep | reference (base and cold-start students)
    label: str  # the method, or "knob=value" in a sweep
    method: str
    seed: int | None
    accuracy: float
    n_test: int
    n_correct: int
    problems: int = 0
    teacher_tokens: int = 0
    trajectories: int = 0  # produced (selected or not)
    selected: int = 0  # trained on
    accepted_problems: int = 0  # problems with at least one selected trajectory
    pruned: int = 0  # Gen-SSD paths ended by the suitability rule
    mean_student_tokens: float | None = None  # of the selected trajectories
    mean_ppl: float | None = None  # the cold-start student's PPL of the selected trajectories
    pool_exhausted: bool = False
    generate_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    checkpoint: str = ""
    config: dict = field(default_factory=dict)
    ppls: list[float] = field(default_factory=list)  # every selected trajectory's PPL (for plots)
    graded: dict[str, list[bool]] = field(default_factory=dict)  # test problem_id -> each sample correct (paired stats)
    evaluation: dict = field(default_factory=dict)  # the test set and settings the scores were made with

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_problems / self.problems if self.problems else None

    @property
    def prune_rate(self) -> float | None:
        return self.pruned / self.problems if self.problems else None

    @property
    def tokens_per_accepted(self) -> float | None:
        return self.teacher_tokens / self.selected if self.selected else None

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(acceptance_rate=self.acceptance_rate, prune_rate=self.prune_rate,
                   tokens_per_accepted=self.tokens_per_accepted)
        return out
