"""Timing a teacher or a student scorer from outside: every session call timed, every token counted.

The benchmarks wrap the backends in these (`MeteredTeacher(teacher)`) and hand the wrappers to the
method, which sees the same `Teacher`/`Scorer` interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Meter:
    seconds: float = 0.0
    tokens: int = 0  # teacher tokens generated, or student tokens scored
    slots: int = 0  # teacher only: sequences x steps of each call (the longest sequence sets the steps)
    # teacher only, when the batch's width is known: (paths the batch holds x K) x steps of each call,
    # so a slot no path filled counts as idle too (lockstep batches waiting for their longest path)
    capacity: int = 0

    def timed(self, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    @property
    def idle(self) -> float:
        return 1 - self.tokens / self.slots if self.slots else 0.0

    @property
    def idle_of_capacity(self) -> float:
        return 1 - self.tokens / self.capacity if self.capacity else 0.0


class MeteredTeacher:
    """`width`: the paths a batch holds (the method's batch_size), for `Meter.capacity`."""

    def __init__(self, inner, width: int | None = None):
        self.inner, self.version, self.meter, self.width = inner, inner.version, Meter(), width

    def start(self, *args, **kwargs):
        return _MeteredTeacherSession(self.meter, self.meter.timed(self.inner.start, *args, **kwargs), self.width)


class _MeteredTeacherSession:
    def __init__(self, meter: Meter, session, width: int | None = None):
        self.meter, self.session, self.width = meter, session, width

    def propose(self, k, max_tokens, stop_at_newline):
        out = self.meter.timed(self.session.propose, k, max_tokens, stop_at_newline)
        lengths = [p.tokens for row in out for p in row]
        self.meter.tokens += sum(lengths)
        self.meter.slots += len(lengths) * max(lengths, default=0)
        if self.width:
            self.meter.capacity += self.width * k * max(lengths, default=0)
        return out

    def accept(self, chosen):
        return self.meter.timed(self.session.accept, chosen)

    def add(self, questions, seeds):
        return self.meter.timed(self.session.add, questions, seeds)


class MeteredScorer:
    def __init__(self, inner):
        self.inner, self.version, self.meter = inner, inner.version, Meter()

    def start(self, questions):
        return _MeteredScorerSession(self.meter, self.meter.timed(self.inner.start, questions))

    def score_texts(self, questions, texts, ends=None):
        out = self.meter.timed(self.inner.score_texts, questions, texts, ends)
        self.meter.tokens += sum(s.tokens for s in out)
        return out


class _MeteredScorerSession:
    def __init__(self, meter: Meter, session):
        self.meter, self.session = meter, session

    def score(self, candidates, ends):
        out = self.meter.timed(self.session.score, candidates, ends)
        self.meter.tokens += sum(s.tokens for row in out for s in row)
        return out

    def accept(self, chosen):
        return self.meter.timed(self.session.accept, chosen)

    def add(self, questions):
        return self.meter.timed(self.session.add, questions)
