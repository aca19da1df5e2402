"""How a sampling seed is spread over problems, steps and paths, the same way by every backend.

A session is started with one seed (path i of the session draws from the stream (seed, i)) or with
one seed per path (`problem_seed`: the stream depends on the problem alone, so a path draws the same
samples whichever paths it runs beside and whenever it joins the engine)."""

from __future__ import annotations

import hashlib


def step_seed(seed: int, step: int, path: int) -> int:
    """A distinct, reproducible seed per (run, step, path): identical prefixes still get their own
    samples, and a rerun with the same seed draws the same ones. vLLM seeds the K samples of one
    request with seed + index."""
    return (seed * 1_000_003 + step * 10_007 + path * 101) % (2**31 - 1)


def problem_seed(seed: int, problem_id: str) -> int:
    """The seed of one problem's path in a run seeded `seed`: stable across processes and runs, and
    independent of the problem's position among the others."""
    digest = hashlib.sha256(f"{seed}\x1f{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


def path_streams(seed: int | list[int], n: int) -> list[tuple[int, int]]:
    """(seed, index) of each of `n` paths: a shared seed gives path i the stream (seed, i), as
    sessions always have; a list gives each path its own seed, at index 0."""
    if isinstance(seed, int):
        return [(seed, i) for i in range(n)]
    if len(seed) != n:
        raise ValueError(f"{len(seed)} seeds for {n} paths")
    return [(int(s), 0) for s in seed]


class PathSeeds:
    """The seed stream and step count of each live path of a session, kept in the session's order:
    a path's seed at a step depends on its own stream and steps alone."""

    def __init__(self):
        self.streams: list[tuple[int, int]] = []
        self.steps: list[int] = []

    def join(self, seed: int | list[int], n: int) -> None:
        self.streams += path_streams(seed, n)
        self.steps += [0] * n

    def seed(self, i: int) -> int:
        """The seed of path i's request this step."""
        (seed, index), step = self.streams[i], self.steps[i]
        return step_seed(seed, step, index)

    def stepped(self) -> None:
        self.steps = [n + 1 for n in self.steps]

    def keep(self, rows: list[int]) -> None:
        self.streams = [self.streams[i] for i in rows]
        self.steps = [self.steps[i] for i in rows]
