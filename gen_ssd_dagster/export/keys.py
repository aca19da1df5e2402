"""The work keys a home stores trajectories under, and finding one by its short id (`work_id`)."""

from __future__ import annotations

from ..core.errors import ConfigError
from ..store.db import Store
from ..store.trajectories import WorkKey
from .writer import work_id

_FIELDS = "dataset, method, teacher_version, student_version, config_hash, method_version"


def stored_keys(store: Store) -> list[tuple[WorkKey, int, int]]:
    """(key, trajectories, kept) of every work key with stored trajectories, by dataset and method."""
    rows = store.query(f"SELECT {_FIELDS}, count(*), count(*) FILTER (selected) FROM trajectories"
                       f" GROUP BY ALL ORDER BY dataset, method, min(created_at)")
    return [(WorkKey(*r[:6]), r[6], r[7]) for r in rows]


def listing(keys: list[tuple[WorkKey, int, int]]) -> str:
    if not keys:
        return "  (no trajectories stored)"
    return "\n".join(f"  {work_id(k)}  {k.dataset:<10} {k.method:<12} v{k.method_version}  config {k.config_hash}  "
                     f"{kept}/{n} kept  teacher {k.teacher_version}" for k, n, kept in keys)


def find_key(store: Store, ident: str) -> WorkKey:
    """The stored key whose work id is `ident` (or starts with it, if only one does)."""
    keys = stored_keys(store)
    matches = [k for k, _, _ in keys if work_id(k).startswith(ident)] if ident else []
    if len(matches) == 1:
        return matches[0]
    why = "matches several" if matches else "is not a stored work key"
    raise ConfigError(f"export: {ident!r} {why}; the stored work keys of {store.path}:\n{listing(keys)}")
