"""Write one work key's trajectories as a Hugging Face dataset folder: Parquet shards, the card and
its plot, and a manifest with the digest.

    <out>/README.md                   card (YAML header: configs `default` and `all`)
    <out>/data/train-0000i-of-0000n-<hash>.parquet   the kept rows (the run's `keep` setting)
    <out>/all/train-0000i-of-0000n-<hash>.parquet    every trajectory, with its steps and candidates
    <out>/distributions.png           PPL and length, kept vs not kept
    <out>/gen_ssd_export.json         digest, counts, files (not part of the digest)

Rows stream from DuckDB a batch at a time (rows.py), so memory does not grow with the data. The
folder is written beside `out` and renamed into place: a crash leaves the previous one whole. The
same stored work gives the same bytes, so the digest is the data's: if the store has nothing new
(`fingerprint` unchanged) nothing is read or written, and a rewrite that comes out the same is
thrown away, leaving the data files (and their mtimes) in place; only the manifest learns the new
fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core.engines.prompts import PromptSettings
from ..core.data.sharding import check_shards
from ..core.errors import ConfigError, DataError
from ..store.db import Store
from ..store.home import Home
from ..store.trajectories import WorkKey, data_where, partition_summary
from . import card as cards
from .plot import Sample, distributions_png
from .rows import ALL_SCHEMA, KEPT_SCHEMA, MEMORY_LIMIT, stream

FORMAT = 1  # bump when the bytes of an export change for the same stored work
MANIFEST = "gen_ssd_export.json"
ROWS_PER_FILE = 100_000


@dataclass(frozen=True)
class ExportSettings:
    """prompt: the system prompt and instruction written into `messages` (the student's: what the
    project's trainer prompts it with). shards: the count the `shard` column is computed for.
    rows_per_file: rows per Parquet file. teacher, scorer, source: what the card names them."""

    prompt: PromptSettings = PromptSettings()
    shards: int = 1
    rows_per_file: int = ROWS_PER_FILE
    teacher: str = ""
    scorer: str = ""
    source: str = ""

    def validate(self) -> None:
        check_shards(self.shards, "shards")
        if isinstance(self.rows_per_file, bool) or not isinstance(self.rows_per_file, int) or self.rows_per_file < 1:
            raise ConfigError(f"rows_per_file must be a positive integer, got {self.rows_per_file!r}")
        self.prompt.validate("student")

    def record(self) -> dict:
        return {**asdict(self), "prompt": asdict(self.prompt)}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    digest: str
    counts: dict  # problems, trajectories, kept, finished, pruned, length_capped, correct, teacher tokens
    rewritten: bool  # False: the folder already held exactly this
    files: dict = field(default_factory=dict)  # relative path -> {sha256, bytes}
    text_bytes: int = 0  # UTF-8 bytes of the kept rows' question and solution text
    parquet_bytes: int = 0  # of the kept rows' Parquet files


def work_id(key: WorkKey) -> str:
    """A short stable name of a work key (what `gen-ssd export` takes)."""
    blob = "\x1f".join([key.dataset, key.method, key.method_version, key.teacher_version, key.student_version,
                        key.config_hash])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def dataset_dir(home: Home, key: WorkKey) -> Path:
    """Where a work key's dataset lives under the home."""
    return home.root / "datasets" / key.dataset / f"{key.method}-{work_id(key)}"


def project_version() -> str:
    try:
        return metadata.version("gen-ssd-dagster")
    except metadata.PackageNotFoundError:
        return "unknown"


def _fingerprint(store: Store, key: WorkKey, settings: ExportSettings, summary: dict) -> str:
    """What the export is a function of: a change in the store shows in the latest write time."""
    where, params = data_where(key, "t")
    latest = store.query(f"SELECT max(t.created_at) FROM trajectories t WHERE {where}", params)[0][0]
    # Counts only: DuckDB's parallel averages differ in their last bits from one query to the next.
    counts = {k: v for k, v in summary.items() if isinstance(v, int)}
    blob = json.dumps([FORMAT, project_version(), asdict(key), settings.record(), counts, str(latest)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _write_config(batches, folder: Path, rows: int, rows_per_file: int, schema: pa.Schema, on_batch) -> list[str]:
    """Stream `batches` (`rows` in all) into folder/train-0000i-of-0000n-<hash>.parquet; returns their
    paths relative to the dataset folder."""
    folder.mkdir(parents=True)
    n_files = max(1, math.ceil(rows / rows_per_file))
    names = [folder / f"train-{i:05d}-of-{n_files:05d}.parquet" for i in range(n_files)]
    index, in_file, writer = 0, 0, None
    try:
        writer = pq.ParquetWriter(names[0], schema, compression="zstd")
        for batch in batches:
            on_batch(batch)
            while batch.num_rows:
                if in_file == rows_per_file:  # this file is full: the next one
                    writer.close()
                    index, in_file = index + 1, 0
                    writer = pq.ParquetWriter(names[index], schema, compression="zstd")
                part = batch.slice(0, rows_per_file - in_file)
                writer.write_batch(part)
                in_file, batch = in_file + part.num_rows, batch.slice(part.num_rows)
    finally:
        if writer is not None:
            writer.close()
    if index + 1 != n_files:
        raise DataError(f"the store changed while exporting to {folder}: {rows} rows counted, other rows read; "
                        "export again when the generation has finished")
    renamed = []
    for name in names:  # the content's hash in the name: see card.header
        renamed.append(name.with_name(f"{name.stem}-{_sha256(name)[:12]}.parquet"))
        name.rename(renamed[-1])
    return [f"{folder.name}/{p.name}" for p in renamed]


def _replace(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an old `out` is moved aside first and removed once the new one is there."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _result(folder: Path, manifest: dict, rewritten: bool) -> ExportResult:
    return ExportResult(folder, manifest["digest"], manifest["counts"], rewritten, manifest["files"],
                        manifest["text_bytes"], manifest["parquet_bytes"])


def _intact(folder: Path, manifest: dict) -> bool:
    return all((folder / name).is_file() and (folder / name).stat().st_size == f["bytes"]
               for name, f in manifest["files"].items())


def export_dataset(home: Home, key: WorkKey, settings: ExportSettings = ExportSettings(),
                   out: Path | None = None) -> ExportResult:
    """Write (or leave as it is) the dataset of `key` at `out` (default: `dataset_dir`)."""
    settings.validate()
    store = Store(home.db_path)
    out = Path(out) if out is not None else dataset_dir(home, key)
    summary = partition_summary(store, key)
    if not summary["trajectories"]:
        raise DataError(f"no trajectories stored under {key.method} / {key.dataset} (work key {work_id(key)}, "
                        f"config {key.config_hash}, teacher {key.teacher_version}) in {home.db_path}")
    fingerprint = _fingerprint(store, key, settings, summary)
    old = read_manifest(out)
    if old and old.get("fingerprint") == fingerprint and _intact(out, old):
        return _result(out, old, rewritten=False)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        manifest = _write(store, key, settings, summary, tmp, home)
        manifest["fingerprint"] = fingerprint
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if old and old.get("digest") == manifest["digest"] and _intact(out, old):
            # The same bytes: the data files stay untouched; the manifest learns the new fingerprint,
            # so that the next export with nothing new takes the short path.
            os.replace(tmp / MANIFEST, out / MANIFEST)
            shutil.rmtree(tmp)
            return _result(out, old, rewritten=False)
        _replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, duckdb.OutOfMemoryException):
            # Measured: 900,000 trajectories in one uncompacted batch (an old home's, just migrated)
            # outgrew the limit; compacted, the same export ran in it (benchmarks/export_at_scale.py).
            raise DataError(f"exporting {work_id(key)} from {home.root} ran out of DuckDB's {MEMORY_LIMIT}: its "
                            f"trajectories are not compacted yet; run `gen-ssd --home {home.root} store compact` "
                            "and export again") from exc
        raise
    return _result(out, manifest, rewritten=True)


def _write(store: Store, key: WorkKey, settings: ExportSettings, summary: dict, tmp: Path, home: Home) -> dict:
    """Write every file of the folder into `tmp`; returns the manifest (without the fingerprint)."""
    samples = {"ppl": {"kept": Sample(), "not kept": Sample()},
               "student_tokens": {"kept": Sample(), "not kept": Sample()}}
    counted = {"kept": 0, "text_bytes": 0}

    def on_kept(batch: pa.RecordBatch) -> None:
        counted["kept"] += batch.num_rows
        solution = pc.list_flatten(batch.column("completion")).field("content")
        counted["text_bytes"] += sum(pc.sum(pc.binary_length(c)).as_py() or 0
                                     for c in (batch.column("question"), solution))

    def on_any(batch: pa.RecordBatch) -> None:
        kept = batch.column("selected")
        for name, groups in samples.items():
            values = batch.column(name)
            groups["kept"].extend(pc.filter(values, kept).to_pylist())
            groups["not kept"].extend(pc.filter(values, pc.invert(kept)).to_pylist())

    args = (store, key, settings.prompt)
    data_files = {
        cards.KEPT_DIR: _write_config(stream(*args, everything=False, shards=settings.shards), tmp / cards.KEPT_DIR,
                                      summary["selected"], settings.rows_per_file, KEPT_SCHEMA, on_kept),
        cards.ALL_DIR: _write_config(stream(*args, everything=True, shards=settings.shards), tmp / cards.ALL_DIR,
                                     summary["trajectories"], settings.rows_per_file, ALL_SCHEMA, on_any)}
    if counted["kept"] != summary["selected"]:
        raise DataError(f"the store changed while exporting {work_id(key)}: {summary['selected']} kept rows counted, "
                        f"{counted['kept']} read; export again when the generation has finished")
    title = f"{key.method} / {key.dataset}: {summary['trajectories']} trajectories, {counted['kept']} kept"
    (tmp / cards.PLOT_FILE).write_bytes(distributions_png(samples, title))
    where, params = data_where(key, "t")
    config = json.loads(store.query(f"SELECT any_value(t.config) FROM trajectories t WHERE {where}", params)[0][0] or "{}")
    counts = {k: summary[k] for k in ("problems", "trajectories", "finished", "pruned", "length_capped", "correct",
                                      "teacher_tokens")}
    counts = dict(sorted({**counts, "kept": counted["kept"]}.items()))  # the manifest's order
    info = {"work_key": asdict(key), "summary": summary, "config": config, "kept": counted["kept"],
            "project_version": project_version(), "prompt": asdict(settings.prompt), "shards": settings.shards,
            "teacher": settings.teacher, "scorer": settings.scorer, "source": settings.source, "files": data_files,
            "quantiles": {name: {g: s.quantiles() for g, s in groups.items()} for name, groups in samples.items()},
            # the home by its folder name: no machine path in a card that may go public, and a moved
            # home keeps its digest
            "commands": [f"gen-ssd --home {home.root.name} pipeline --partition {key.dataset}   # the trajectories",
                         f"gen-ssd --home {home.root.name} export {work_id(key)}   # this folder"]}
    (tmp / "README.md").write_text(cards.card(info), encoding="utf-8")
    files = {p.relative_to(tmp).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    return {"format": FORMAT, "digest": _digest(files), "work_key": asdict(key), "work_id": work_id(key),
            "counts": counts, "files": files, "text_bytes": counted["text_bytes"],
            "parquet_bytes": sum(f["bytes"] for name, f in files.items() if name.startswith(f"{cards.KEPT_DIR}/"))}
