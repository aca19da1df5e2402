"""The version of each method's code: part of the key of stored work, and each trajectory asset's
Dagster `code_version`.

Bump a method's version when a change to its algorithm changes what it outputs for the same
teacher, scorer and config (the selection loop, how candidates are scored, what is kept): the
trajectories stored under the old version are then no longer reused but kept beside the new ones,
and Dagster shows the asset stale. A refactor that leaves the output alone needs no bump.
"""

from __future__ import annotations

from gen_ssd_dagster.core.errors import ConfigError

# One entry per method of the registry (core/method/registry.py METHODS). Bump it when the
# algorithm's output changes.
METHOD_VERSIONS: dict[str, str] = {
    "gen_ssd": "1",
    "standard_kd": "1",
    "posthoc": "1",
}

# The version of work stored before versions were recorded: its keys and data versions stay as they were.
FIRST_VERSION = "1"


def method_version(method: str) -> str:
    """The current version of `method`'s code."""
    try:
        return METHOD_VERSIONS[method]
    except KeyError:
        raise ConfigError(f"no method version for {method!r}; known: {', '.join(METHOD_VERSIONS)}") from None
