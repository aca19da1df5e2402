"""How a sampling seed is spread over steps and paths, the same way by every backend that takes a
seed per request (vLLM, an OpenAI-compatible server)."""

from __future__ import annotations


def step_seed(seed: int, step: int, path: int) -> int:
    """A distinct, reproducible seed per (run, step, path): identical prefixes still get their own
    samples, and a rerun with the same seed draws the same ones. vLLM seeds the K samples of one
    request with seed + index."""
    return (seed * 1_000_003 + step * 10_007 + path * 101) % (2**31 - 1)
