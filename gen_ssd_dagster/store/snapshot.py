"""What a reader of the trajectory tables sees: a compacted layer known to be unique, plus a small
tail of fresh batches that is de-duplicated at read time.

    manifest/<gen>.json          the compacted layer: its segments, and the batches they consumed
    compacted/<segment>/         {problem_runs,trajectories,candidates}.parquet + keys.npy
    batches/<commit_id>/         committed batches; those not consumed by the manifest are the tail

The compactor (`compaction.py`) writes segments first and a manifest last (a new file per
generation), so a reader that took generation g reads g's segments and every batch g did not
consume: whole batches, each row once, whatever the compactor does meanwhile. Files a manifest
stops naming are deleted only `DELETE_AFTER_S` later, so a reader that started before can finish.

First commit wins (smallest commit_id per work key and problem) across both layers: segments hold
only winners among the batches they consumed, and a tail row that shares a problem with a segment
is compared with it here. Such a clash is found by looking the tail's problem keys up in each
segment's sorted `keys.npy` (no scan of the compacted layer), so a query over a compacted home
reads the segments as they are, without a window or a join.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .segments import TABLES, sql_path


# Files no manifest names any more are deleted this long after, so a reader that listed them can finish.
DELETE_AFTER_S = 600.0
KEYS_FILE = "keys.npy"
# Each segment keeps its trajectories counted by these columns (`trajectory_counts`): the viewer's
# counts and filter menus read those few rows instead of every trajectory.
COUNT_COLUMNS = ("dataset", "method", "method_version", "teacher_version", "config_hash", "end_reason", "correct",
                 "selected")
COUNTS = "trajectory_counts"
COUNTS_SQL = f"SELECT {', '.join(COUNT_COLUMNS)}, count(*) AS n FROM {{}} GROUP BY ALL"


def key_number(problem_key: str) -> int:
    """The first 64 bits of a problem key (an md5 in hex): what keys.npy holds, sorted."""
    return int(problem_key[:16], 16)


KEY_NUMBER_SQL = "CAST(('0x' || left(problem_key, 16)) AS UBIGINT)"


@dataclass
class Manifest:
    gen: int = 0
    segments: list[dict] = field(default_factory=list)  # {"name", "level", "rows": {table: n}}
    consumed: dict[str, float] = field(default_factory=dict)  # batch name -> when it was compacted
    retired: dict[str, float] = field(default_factory=dict)  # segment name -> when a manifest dropped it

    def to_json(self) -> str:
        return json.dumps({"gen": self.gen, "segments": self.segments, "consumed": self.consumed,
                           "retired": self.retired}, indent=0)


def manifest_names(root: Path) -> list[str]:
    folder = root / "manifest"
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) if folder.is_dir() else []


def read_manifest(root: Path) -> Manifest:
    """The newest manifest (an empty one before the first compaction)."""
    for _ in range(5):  # the newest may be swapped for a newer one while we look: take that one
        names = manifest_names(root)
        if not names:
            return Manifest()
        try:
            return Manifest(**json.loads((root / "manifest" / names[-1]).read_text()))
        except FileNotFoundError:
            continue
    raise RuntimeError(f"{root / 'manifest'}: the newest manifest kept vanishing while read")


@dataclass
class Snapshot:
    root: Path
    manifest: Manifest
    tail: list[Path]  # batch folders, in commit order

    def segment_dirs(self) -> list[Path]:
        """Newest first: a newest-first query finds its rows in the first row groups it reads."""
        segs = sorted(self.manifest.segments, key=lambda s: s.get("last_commit", ""), reverse=True)
        return [self.root / "compacted" / s["name"] for s in segs]

    def files(self, table: str, folders: list[Path]) -> list[Path]:
        return [p for p in (f / f"{table}.parquet" for f in folders) if p.exists()]


def take(root: Path) -> Snapshot:
    """The manifest first, then the listing: a batch consumed in between is still read from the tail."""
    manifest = read_manifest(root)
    folder = root / "batches"
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    return Snapshot(root, manifest, [folder / n for n in names if n not in manifest.consumed])


def _source(files: list[Path], empty_sql: str) -> str:
    if not files:
        return empty_sql
    return "SELECT * FROM read_parquet([" + ", ".join(sql_path(p) for p in files) + "])"


def clashes(snap: Snapshot, tail_keys: list[str]) -> list[str]:
    """The tail's problem keys that some segment holds too (64-bit look-ups in keys.npy: a rare
    false hit is settled by the exact comparison that follows)."""
    if not tail_keys or not snap.manifest.segments:
        return []
    numbers = np.array([key_number(k) for k in tail_keys], dtype=np.uint64)
    hit = np.zeros(len(numbers), dtype=bool)
    for seg in snap.segment_dirs():
        keys = np.load(seg / KEYS_FILE, mmap_mode="r")
        if len(keys):
            at = np.searchsorted(keys, numbers).clip(max=len(keys) - 1)
            hit |= keys[at] == numbers
    return [k for k, h in zip(tail_keys, hit) if h]


def create_views(con, snap: Snapshot, legacy_selects: dict[str, str] | None = None) -> None:
    """Temp views `problem_runs`, `trajectories` and `candidates` (and `_<table>_won` with the
    problem_key and commit_id columns) over one snapshot: the segments as they are, plus the tail
    (and an old home's DuckDB tables, `legacy_selects`) de-duplicated, first commit winning."""
    from .schema import empty_select

    for table in TABLES:
        con.execute(f"CREATE OR REPLACE TEMP VIEW _{table}_compacted AS"
                    f" {_source(snap.files(table, snap.segment_dirs()), empty_select(table))}")
        tail = _source(snap.files(table, snap.tail), empty_select(table))
        if (legacy_selects or {}).get(table):
            tail = f"{tail} UNION ALL BY NAME {legacy_selects[table]}"
        con.execute(f"CREATE OR REPLACE TEMP VIEW _{table}_tail AS {tail}")
    has_tail = bool(snap.tail) or any((legacy_selects or {}).values())
    beaten, lost = _settle_clashes(con, snap, any((legacy_selects or {}).values())) if has_tail else ([], [])
    not_lost = " WHERE problem_key NOT IN (SELECT problem_key FROM _tail_lost)" if lost else ""
    not_beaten = " WHERE problem_key NOT IN (SELECT problem_key FROM _beaten)" if beaten else ""
    con.execute("CREATE OR REPLACE TEMP VIEW _problem_runs_tail_won AS SELECT * FROM _problem_runs_tail"
                f"{not_lost}"
                " QUALIFY row_number() OVER (PARTITION BY problem_key ORDER BY commit_id) = 1" if has_tail else
                "CREATE OR REPLACE TEMP VIEW _problem_runs_tail_won AS SELECT * FROM _problem_runs_tail")
    # a trajectory without any problem_runs row (possible only in an old home) is kept
    orphan = "w.won IS NULL" + (" AND t.problem_key NOT IN (SELECT problem_key FROM _tail_lost)" if lost else "")
    con.execute("CREATE OR REPLACE TEMP VIEW _trajectories_tail_won AS SELECT t.* FROM _trajectories_tail t"
                " LEFT JOIN (SELECT problem_key, commit_id AS won FROM _problem_runs_tail_won) w USING (problem_key)"
                f" WHERE ({orphan}) OR w.won = t.commit_id" if has_tail else
                "CREATE OR REPLACE TEMP VIEW _trajectories_tail_won AS SELECT * FROM _trajectories_tail")
    con.execute("CREATE OR REPLACE TEMP VIEW _candidates_tail_won AS SELECT c.* FROM _candidates_tail c"
                " SEMI JOIN _trajectories_tail_won t ON c.trajectory_key = t.trajectory_key"
                " AND c.commit_id = t.commit_id")
    for table in ("problem_runs", "trajectories"):
        con.execute(f"CREATE OR REPLACE TEMP VIEW _{table}_won AS SELECT * FROM _{table}_compacted{not_beaten}"
                    + (f" UNION ALL SELECT * FROM _{table}_tail_won" if has_tail else ""))
        con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * EXCLUDE (problem_key, commit_id) FROM _{table}_won")
    cand = "SELECT * FROM _candidates_compacted"
    if beaten:
        cand += (" WHERE trajectory_key NOT IN (SELECT trajectory_key FROM _trajectories_compacted"
                 " WHERE problem_key IN (SELECT problem_key FROM _beaten))")
    if has_tail:
        cand += " UNION ALL SELECT * FROM _candidates_tail_won"
    con.execute(f"CREATE OR REPLACE TEMP VIEW _candidates_won AS {cand}")
    con.execute("CREATE OR REPLACE TEMP VIEW candidates AS SELECT * EXCLUDE (commit_id) FROM _candidates_won")
    counted = snap.files(COUNTS, snap.segment_dirs())
    counts = ([f"SELECT * FROM read_parquet([{', '.join(sql_path(p) for p in counted)}])"] if counted and not beaten
              else [COUNTS_SQL.format("_trajectories_compacted" + not_beaten)] if snap.manifest.segments else [])
    counts += [COUNTS_SQL.format("_trajectories_tail_won")] if has_tail else []
    cols = ", ".join(COUNT_COLUMNS)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {COUNTS} AS SELECT {cols}, CAST(sum(n) AS BIGINT) AS n FROM ("
                + (" UNION ALL ".join(counts) or COUNTS_SQL.format("trajectories")) + ") GROUP BY ALL")


# (folder, manifest generation, batch) -> the batch's problems that a segment of that generation
# holds, with their commit id: a batch and a generation never change, so a long-lived reader (the
# viewer) looks each batch up once.
_HITS: dict[tuple[str, int, str], dict[str, str]] = {}


def _tail_hits(con, snap: Snapshot) -> dict[str, str]:
    """problem key -> earliest tail commit id, of the tail's problems some segment holds too."""
    if len(_HITS) > 100_000:
        _HITS.clear()
    out: dict[str, str] = {}
    for batch in snap.tail:
        cached = (str(snap.root), snap.manifest.gen, batch.name)
        if cached not in _HITS:
            runs = batch / "problem_runs.parquet"
            rows = dict(con.execute(f"SELECT problem_key, min(commit_id) FROM read_parquet({sql_path(runs)})"
                                    " GROUP BY 1").fetchall()) if runs.exists() else {}
            _HITS[cached] = {k: rows[k] for k in clashes(snap, list(rows))}
        for key, commit_id in _HITS[cached].items():
            out[key] = min(out.get(key, commit_id), commit_id)
    return out


def _settle_clashes(con, snap: Snapshot, legacy: bool = False) -> tuple[list[str], list[str]]:
    """Compare the tail's problems that a segment holds too with the segment's row: `_beaten` gets
    the segments' rows a tail commit precedes (rare: a writer that committed late with an early
    commit id), `_tail_lost` the tail's rows a segment precedes (a problem written twice)."""
    if not snap.manifest.segments:
        first = {}
    elif legacy:
        first = dict(con.execute("SELECT problem_key, min(commit_id) FROM _problem_runs_tail GROUP BY 1").fetchall())
    else:
        first = _tail_hits(con, snap)
    both = clashes(snap, list(first))
    compacted = dict(con.execute(
        "SELECT problem_key, commit_id FROM _problem_runs_compacted WHERE list_contains(?, problem_key)",
        [both]).fetchall()) if both else {}
    beaten = [k for k, c in compacted.items() if first[k] < c]
    lost = [k for k, c in compacted.items() if first[k] >= c]
    for name, keys in (("_beaten", beaten), ("_tail_lost", lost)):
        if keys:  # (none, nearly always: the views then leave the clause out)
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT unnest(?::VARCHAR[]) AS problem_key", [keys])
    return beaten, lost
