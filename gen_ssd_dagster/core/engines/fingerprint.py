"""Whole-content fingerprints of local checkpoints, each file hashed once per file version.

A model's version keys everything the pipeline reuses (trajectories, cold start, students, scores),
so it must change whenever any byte of the weights changes: a merged LoRA in the middle layers of
a 15 GB shard included. Every file is read in full (SHA-256, about 1.6 GB/s per core here); the
digest is remembered in a small SQLite cache keyed by the file's path, size, mtime, ctime, inode
and device, so re-observing an unchanged checkpoint reads no weights. ctime is in the key because
the user cannot set it: `cp -p` over the old file keeps the inode, the size and the mtime, but not
the ctime.

The cache lives at $GEN_SSD_FINGERPRINT_CACHE, else `$XDG_CACHE_HOME/gen-ssd-dagster/
fingerprints.sqlite` (~/.cache when XDG_CACHE_HOME is unset). It is only a memo: deleting it costs
one re-read, and a cache that cannot be opened or written is skipped (the file is hashed anyway).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE_ENV = "GEN_SSD_FINGERPRINT_CACHE"
_CHUNK = 8 << 20
# Shards hash in parallel: hashlib releases the GIL on large updates.
_WORKERS = max(1, min(4, os.cpu_count() or 1))


def default_cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gen-ssd-dagster" / "fingerprints.sqlite"


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def hash_file(path: Path) -> str:
    """SHA-256 of the whole file."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


class DigestCache:
    """(path, size, mtime_ns, ctime_ns, inode, device) -> SHA-256, shared by every process on the
    machine (SQLite takes care of concurrent writers). `reads` counts the files actually hashed."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.reads = 0

    def _connect(self) -> sqlite3.Connection | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30)
            con.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT, size INTEGER, mtime_ns INTEGER,"
                        " ctime_ns INTEGER, inode INTEGER, device INTEGER, sha256 TEXT,"
                        " PRIMARY KEY (path, size, mtime_ns, ctime_ns, inode, device))")
            return con
        except (OSError, sqlite3.Error):  # a read-only or broken cache: hash without memo
            return None

    def digests(self, files: list[Path]) -> dict[Path, str]:
        """The SHA-256 of each file, reading only those whose stat key is not cached."""
        keys = {f: _stat_key(f) for f in files}
        con = self._connect()
        found: dict[Path, str] = {}
        if con is not None:
            with con:
                for f, key in keys.items():
                    row = con.execute("SELECT sha256 FROM digests WHERE path=? AND size=? AND mtime_ns=?"
                                      " AND ctime_ns=? AND inode=? AND device=?", key).fetchone()
                    if row:
                        found[f] = row[0]
        todo = [f for f in files if f not in found]
        with ThreadPoolExecutor(_WORKERS) as pool:
            for f, sha in zip(todo, pool.map(hash_file, todo)):
                found[f] = sha
        self.reads += len(todo)
        if con is not None:
            try:
                with con:
                    # a file written while it was read has a new stat key: its digest is not stored
                    con.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    [(*keys[f], found[f]) for f in todo if _stat_key(f) == keys[f]])
            except sqlite3.Error:
                pass
            finally:
                con.close()
        return found


def content_fingerprint(files: list[Path], cache: DigestCache | None = None) -> str:
    """SHA-256 over each file's name, size and whole-content digest, in the order given."""
    digests = (cache or DigestCache()).digests(files)
    total = hashlib.sha256()
    for f in files:
        total.update(f"{f.name}\0{f.stat().st_size}\0{digests[f]}\n".encode())
    return total.hexdigest()
