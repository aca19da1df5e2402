"""Compaction: fold the tail of fresh batches into the compacted layer (`snapshot.py`), so reads need
no per-query de-duplication over most of the rows.

One compactor at a time (an atomic `mkdir compacting/`, skipped when held); it never blocks a reader
or a writer: it only adds files and, last, a new manifest. A compaction killed at any point leaves
the previous manifest in force and every batch it was folding still in the tail: nothing is lost
or counted twice, and what it wrote is deleted by a later compaction.

    python -m gen_ssd_dagster.store.compaction <db path> [--min-batches N]    # what writers start
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np

from . import snapshot as snap_mod
from .segments import fsync, new_commit_id, sql_path
from .snapshot import COUNTS, COUNTS_SQL, KEY_NUMBER_SQL, KEYS_FILE, TABLES, Manifest, create_views, read_manifest, take

# Rows sorted so that min/max statistics skip row groups: the viewer's newest-first page reads the
# newest row groups only (segments are listed newest first), a trajectory's candidates are found by key.
LAYOUT = {"problem_runs": ("problem_key", 122_880), "trajectories": ("created_at DESC, trajectory_key", 16_384),
          "candidates": ("trajectory_key, step, candidate_index", 122_880)}
FANOUT = 4  # this many segments of one level are concatenated into one of the next level
CLAIM_STALE_S = 3600.0  # a claim left this long (a killed compactor's) is taken over
# Writers start a compactor when the tail holds this many batches ($GEN_SSD_COMPACT_AFTER; 0: never).
COMPACT_AFTER = 32
STALE_TMP_S = 24 * 3600.0


def compact_after() -> int:
    return int(os.environ.get("GEN_SSD_COMPACT_AFTER", COMPACT_AFTER))


def _claim(root: Path) -> Path | None:
    claim = root / "compacting"
    root.mkdir(parents=True, exist_ok=True)
    try:
        claim.mkdir()
    except FileExistsError:
        try:
            if time.time() - claim.stat().st_mtime < CLAIM_STALE_S:
                return None
        except FileNotFoundError:
            return None
        shutil.rmtree(claim, ignore_errors=True)  # a dead compactor's; next time round it is ours
        return None
    return claim


def compact(root: Path, min_batches: int = 1) -> str | None:
    """Fold the tail into a new segment when it holds at least `min_batches` batches, merge
    segments level by level, delete what no manifest has needed for DELETE_AFTER_S. Returns the
    new manifest's file name, or None when another compactor holds the claim or nothing changed."""
    claim = _claim(root)
    if claim is None:
        return None
    con = duckdb.connect(config={"memory_limit": "1GB", "threads": 1})
    try:
        before = read_manifest(root)
        manifest = _clean(root, read_manifest(root))
        changed = manifest.to_json() != before.to_json()
        snap = take(root)
        snap.manifest = manifest
        if len(snap.tail) >= max(min_batches, 1):
            _fold_tail(con, snap, manifest)
            changed = True
        changed |= _merge_levels(con, root, manifest)
        if not changed:
            return None
        return _write_manifest(root, manifest)
    finally:
        con.close()
        shutil.rmtree(claim, ignore_errors=True)


def _fold_tail(con, snap: snap_mod.Snapshot, manifest: Manifest) -> None:
    """The tail's winners become one segment; a segment with rows a tail commit precedes (rare) is
    rewritten without them."""
    create_views(con, snap)
    now = time.time()
    beaten = con.execute("SELECT count(*) FROM _beaten").fetchone()[0] if _exists(con, "_beaten") else 0
    if beaten:
        for seg in list(manifest.segments):
            folder = snap.root / "compacted" / seg["name"]
            has = con.execute(f"SELECT count(*) FROM read_parquet({sql_path(folder / 'problem_runs.parquet')})"
                              " WHERE problem_key IN (SELECT problem_key FROM _beaten)").fetchone()[0]
            if has:
                src = {t: f"read_parquet({sql_path(folder / f'{t}.parquet')})" for t in TABLES
                       if (folder / f"{t}.parquet").exists()}
                beaten_traj = ("SELECT trajectory_key FROM " + src["trajectories"] +
                               " WHERE problem_key IN (SELECT problem_key FROM _beaten)") if "trajectories" in src else "SELECT NULL"
                selects = {t: f"SELECT * FROM {s} WHERE " + ("trajectory_key NOT IN (" + beaten_traj + ")"
                                                              if t == "candidates" else
                                                              "problem_key NOT IN (SELECT problem_key FROM _beaten)")
                           for t, s in src.items()}
                _replace(manifest, [seg], _write_segment(con, snap.root, selects, seg["level"]), now)
    selects = {t: f"SELECT * FROM _{t}_tail_won" for t in TABLES}
    manifest.segments.append(_write_segment(con, snap.root, selects, 0))
    manifest.consumed.update({b.name: now for b in snap.tail})


def _exists(con, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0])


def _merge_levels(con, root: Path, manifest: Manifest) -> bool:
    """Concatenate FANOUT segments of one level into one of the next (they hold disjoint problems,
    so nothing is de-duplicated): the segment count stays logarithmic in the rows."""
    merged = False
    while True:
        by_level: dict[int, list[dict]] = {}
        for seg in manifest.segments:
            by_level.setdefault(seg["level"], []).append(seg)
        full = [segs for _, segs in sorted(by_level.items()) if len(segs) >= FANOUT]
        if not full:
            return merged
        group = full[0][:FANOUT]
        folders = [root / "compacted" / s["name"] for s in group]
        selects = {}
        for t in TABLES:
            files = [f / f"{t}.parquet" for f in folders if (f / f"{t}.parquet").exists()]
            if files:
                selects[t] = "SELECT * FROM read_parquet([" + ", ".join(sql_path(p) for p in files) + "])"
        keys = np.sort(np.concatenate([np.load(f / KEYS_FILE) for f in folders]))
        _replace(manifest, group, _write_segment(con, root, selects, group[0]["level"] + 1, keys), time.time())
        merged = True


def _replace(manifest: Manifest, old: list[dict], new: dict, now: float) -> None:
    names = {s["name"] for s in old}
    at = manifest.segments.index(old[0])
    manifest.segments = [s for s in manifest.segments if s["name"] not in names]
    manifest.segments.insert(min(at, len(manifest.segments)), new)
    manifest.retired.update({n: now for n in names})


def _write_segment(con, root: Path, selects: dict[str, str], level: int, keys: np.ndarray | None = None) -> dict:
    """Write a segment folder (files and keys.npy, fsynced) under tmp/, then rename it into compacted/."""
    name = new_commit_id()
    tmp = root / "tmp" / f"seg-{name}"
    tmp.mkdir(parents=True)
    rows = {}
    for table, select in selects.items():
        n = con.execute(f"SELECT count(*) FROM ({select})").fetchone()[0]
        if n:
            path = tmp / f"{table}.parquet"
            order, group = LAYOUT[table]
            con.execute(f"COPY ({select} ORDER BY {order}) TO {sql_path(path)}"
                        f" (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {group})")
            fsync(path)
        rows[table] = n
    last = con.execute(f"SELECT max(commit_id) FROM read_parquet({sql_path(tmp / 'problem_runs.parquet')})").fetchone()[0] \
        if rows.get("problem_runs") else ""
    if rows.get("trajectories"):
        counts = tmp / f"{COUNTS}.parquet"
        con.execute(f"COPY ({COUNTS_SQL.format('read_parquet(' + sql_path(tmp / 'trajectories.parquet') + ')')})"
                    f" TO {sql_path(counts)} (FORMAT parquet)")
        fsync(counts)
    if keys is None:
        runs = tmp / "problem_runs.parquet"
        keys = np.sort(np.array([k for (k,) in con.execute(
            f"SELECT {KEY_NUMBER_SQL} FROM read_parquet({sql_path(runs)})").fetchall()], dtype=np.uint64)
                       if runs.exists() else np.zeros(0, dtype=np.uint64))
    np.save(tmp / KEYS_FILE, keys.astype(np.uint64))
    fsync(tmp / KEYS_FILE)
    fsync(tmp)
    (root / "compacted").mkdir(exist_ok=True)
    os.rename(tmp, root / "compacted" / name)
    return {"name": name, "level": level, "rows": rows, "last_commit": last}


def _write_manifest(root: Path, manifest: Manifest) -> str | None:
    """The commit point of a compaction: a new generation's file, linked into place only if no one
    wrote that generation (a stale claim taken over while its owner still ran)."""
    manifest.gen += 1
    folder = root / "manifest"
    folder.mkdir(exist_ok=True)
    name = f"{manifest.gen:012d}.json"
    tmp = root / "tmp" / f"manifest-{uuid.uuid4().hex}"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(manifest.to_json())
    fsync(tmp)
    try:
        os.link(tmp, folder / name)
    except FileExistsError:
        return None
    finally:
        tmp.unlink()
    fsync(folder)
    return name


def _clean(root: Path, manifest: Manifest) -> Manifest:
    """Delete what the newest manifest has not needed for DELETE_AFTER_S: consumed batches, retired
    and orphaned segments (a killed compaction's), old manifests, stale tmp/ entries. Files go
    before the manifest that forgets them, so a crash here leaves them ignored, not read again."""
    now = time.time()
    old = now - snap_mod.DELETE_AFTER_S
    for name, at in list(manifest.consumed.items()):
        if at < old:
            shutil.rmtree(root / "batches" / name, ignore_errors=True)
            del manifest.consumed[name]
    for name, at in list(manifest.retired.items()):
        if at < old:
            shutil.rmtree(root / "compacted" / name, ignore_errors=True)
            del manifest.retired[name]
    known = {s["name"] for s in manifest.segments} | set(manifest.retired)
    for folder in (root / "compacted").iterdir() if (root / "compacted").is_dir() else []:
        if folder.name not in known and folder.stat().st_mtime < now - CLAIM_STALE_S:
            shutil.rmtree(folder, ignore_errors=True)
    names = snap_mod.manifest_names(root)
    for name in names[:-1]:
        path = root / "manifest" / name
        if path.stat().st_mtime < old:
            path.unlink(missing_ok=True)
    for stale in (root / "tmp").iterdir() if (root / "tmp").is_dir() else []:
        if stale.stat().st_mtime < now - STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    return manifest


def tail_size(root: Path) -> int:
    """How many committed batches no manifest has consumed yet."""
    folder = root / "batches"
    if not folder.is_dir():
        return 0
    consumed = read_manifest(root).consumed
    return sum(1 for n in os.listdir(folder) if n not in consumed)


def start_if_due(root: Path) -> subprocess.Popen | None:
    """After a commit: when the tail has reached $GEN_SSD_COMPACT_AFTER batches and no compactor
    holds the claim, start one in a detached process (the writer does not wait for it)."""
    after = compact_after()
    if after <= 0 or (root / "compacting").exists() or tail_size(root) < after:
        return None
    return subprocess.Popen([sys.executable, "-m", "gen_ssd_dagster.store.compaction", str(root),
                             "--min-batches", str(after)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="the trajectory tables' folder (<db>.trajectories)")
    p.add_argument("--min-batches", type=int, default=1)
    args = p.parse_args(argv)
    compact(Path(args.root), args.min_batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
