"""Problems in batches, each batch with its own seed, where a session is seeded per batch
(calibration, evaluation). The methods seed each problem by its id instead (`seeding.problem_seed`).

A batch's seed is the base seed plus the index of its first item: the seed it has in one
uninterrupted pass over all the items. A run resumed after a crash, or one that redoes only some
batches, therefore samples exactly what the uninterrupted run does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def batches(items: Sequence[T], batch_size: int, seed: int) -> Iterator[tuple[int, Sequence[T], int]]:
    """(start, items[start:start + batch_size], seed + start) for each batch, in order."""
    for start in range(0, len(items), batch_size):
        yield start, items[start:start + batch_size], seed + start
