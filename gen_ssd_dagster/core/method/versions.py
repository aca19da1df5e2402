"""The version of each method's code: part of the key of stored work, and each trajectory asset's
Dagster `code_version`.

Bump a method's version (its `version` in core/method/methods.py) when a change to its algorithm
changes what it outputs for the same teacher, scorer and config (the selection loop, how candidates
are scored, what is kept): the trajectories stored under the old version are then no longer reused
but kept beside the new ones, and Dagster shows the asset stale. A refactor that leaves the output
alone needs no bump.
"""

from __future__ import annotations

from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.method.methods import METHODS

# The version of work stored before versions were recorded: its keys and data versions stay as they were.
FIRST_VERSION = "1"


def method_version(method: str) -> str:
    """The current version of `method`'s code."""
    try:
        return METHODS[method].version
    except KeyError:
        raise ConfigError(f"no method version for {method!r}; known: {', '.join(METHODS)}") from None
