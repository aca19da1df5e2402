"""Which shard of a dataset a problem belongs to: a stable function of its id alone.

A hash (not Python's `hash`, which changes per process) of the problem id, mod the shard count: every
worker, run and machine puts a problem in the same shard, whatever order the problems come in and
whichever other problems are present. Stored work is keyed by problem, never by shard, so changing
the count re-groups problems without invalidating anything already generated."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from ..errors import ConfigError
from ..types import Problem


def check_shards(shards, setting: str = "shards") -> int:
    """`shards` as a positive int; anything else is a ConfigError naming `setting`."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"{setting} must be a positive integer, got {shards!r}")
    return shards


def shard_of(problem_id: str, shards: int) -> int:
    """The shard (0 .. shards-1) of the problem `problem_id` when its dataset is cut in `shards`."""
    check_shards(shards)
    digest = hashlib.sha256(f"shard\x1f{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_problems(problems: Iterable[Problem], shard: int, shards: int) -> list[Problem]:
    """The problems of shard `shard` of `shards`, in their given order."""
    check_shards(shards)
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ConfigError(f"shard must be in 0..{shards - 1}, got {shard!r}")
    return [p for p in problems if shard_of(p.problem_id, shards) == shard]


SHARDS_ENV = "GEN_SSD_SHARDS"


def shard_count() -> int:
    """How many shards each dataset's trajectories are cut into: $GEN_SSD_SHARDS, default 1 (the
    Dagster layer reads it when its definitions load: defs/partitions.py)."""
    raw = os.environ.get(SHARDS_ENV, "").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{SHARDS_ENV} must be a positive integer, got {raw!r}") from None
    return check_shards(value, SHARDS_ENV)
