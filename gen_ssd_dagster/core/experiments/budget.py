"""The teacher-token budget: one rule for the comparison's arms and the pipeline's trajectories.

Problems are taken in the seed's order; a problem counts in while the teacher tokens spent on it
(every token the teacher generated for it: rejected candidates and pruned paths included) still
fit in what is left of the budget. The first problem that does not fit closes the budget: no later,
cheaper one is taken, so the data is always a prefix of the seed's stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.types import Problem


def seed_order(problems: list[Problem], seed: int) -> list[Problem]:
    """The seed's problem stream: the pool in a seed-determined order."""
    order = list(problems)
    random.Random(f"comparison-{seed}").shuffle(order)
    return order


@dataclass
class BudgetMeter:
    """Counts problems, in stream order, into a teacher-token budget (see the module doc)."""

    budget: int
    spent: int = 0
    taken: int = 0  # problems within the budget
    closed: bool = False  # a problem did not fit: the prefix is final

    def __post_init__(self):
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ConfigError(f"teacher_token_budget must be a positive integer, got {self.budget!r}")

    def take(self, cost: int) -> bool:
        """Count the next problem in if its `cost` fits; False (and closed from then on) if not."""
        if self.closed or self.spent + cost > self.budget:
            self.closed = True
            return False
        self.spent += cost
        self.taken += 1
        return True

    def problems_left(self, at_least: int) -> int:
        """How many more problems the rest of the budget buys at the mean cost so far (at least
        `at_least`): the size of the next slice of the stream to generate."""
        if not self.taken or not self.spent:
            return at_least
        mean = self.spent / self.taken
        return max(at_least, -(-(self.budget - self.spent) // max(1, round(mean))))
