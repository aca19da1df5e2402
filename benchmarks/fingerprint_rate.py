"""What a checkpoint's whole-content fingerprint costs (core/engines/fingerprint.py).

Writes a sharded checkpoint of random bytes (default 4 shards x 512 MiB) and times, in one run:
- the first observation: every byte hashed (SHA-256, shards in parallel threads);
- a re-observation of the unchanged checkpoint: stat + the digest cache, no weights read;
- a re-observation after one shard changed: that shard alone re-read;
- the baseline, the fingerprint of earlier releases (name, size, first and last MiB of each file).
The first observation of a larger checkpoint is extrapolated from the measured rate.
The files were just written, so they are read from the page cache; a cold disk may be slower.

    .venv/bin/python benchmarks/fingerprint_rate.py [--shards 4] [--shard-mib 512]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from gen_ssd_dagster.core.engines.fingerprint import DigestCache
from gen_ssd_dagster.core.engines.models import ModelSpec, weights_version

MIB = 1 << 20


def first_and_last_mib(root: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in root.iterdir() if p.is_file()):
        size = f.stat().st_size
        digest.update(f.name.encode() + str(size).encode())
        with f.open("rb") as fh:
            digest.update(fh.read(MIB))
            if size > 2 * MIB:
                fh.seek(-MIB, 2)
                digest.update(fh.read(MIB))
    return digest.hexdigest()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fingerprint-bench-") as tmp:
        root = Path(tmp) / "checkpoint"
        root.mkdir()
        (root / "config.json").write_text('{"model_type": "llama"}')
        for i in range(args.shards):
            with open(root / f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors", "wb") as f:
                for _ in range(args.shard_mib // 64):
                    f.write(os.urandom(64 * MIB))
        total = sum(p.stat().st_size for p in root.iterdir())
        spec, cache = ModelSpec(str(root)), DigestCache(Path(tmp) / "digests.sqlite")

        t_old, _ = timed(lambda: first_and_last_mib(root))
        t_first, _ = timed(lambda: weights_version(spec, cache))
        t_again, _ = timed(lambda: weights_version(spec, cache))
        shard = root / f"model-00001-of-{args.shards:05d}.safetensors"
        with open(shard, "r+b") as f:
            f.seek(shard.stat().st_size // 2)
            f.write(b"\x01")
        t_one, _ = timed(lambda: weights_version(spec, cache))

    rate = total / t_first / 1e9
    print(f"checkpoint: {args.shards} shards, {total / 1e9:.2f} GB, {os.cpu_count()} CPUs")
    print("| observation | seconds | vs. first/last MiB (baseline) |")
    print("|---|---:|---:|")
    print(f"| first/last MiB of each file (earlier releases; blind mid-file) | {t_old:.3f} | 1.0x |")
    print(f"| first, whole content ({rate:.2f} GB/s) | {t_first:.2f} | {t_first / t_old:.0f}x |")
    print(f"| unchanged, from the digest cache | {t_again:.4f} | {t_again / t_old:.2f}x |")
    print(f"| one shard changed (re-reads it) | {t_one:.2f} | {t_one / t_old:.0f}x |")
    for gb in (15, 64, 140):
        print(f"first observation of a {gb} GB checkpoint at this rate: {gb / rate:.0f} s")


if __name__ == "__main__":
    main()
