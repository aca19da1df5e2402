"""Lineage of the distilled models, read back from MLflow and DuckDB (no Dagster needed).

Forward: which teacher version, datasets (partitions), method config and how many trajectories
produced a registered model version. The distillation assets tag every MLflow model version (and
its run) with `method`, `partitions`, `config_hash` ("dataset:hash,..." or one hash),
`teacher_version`, `student_version` (the scorer), `trajectories`, `base_version`,
`model_version`, `checkpoint_key` and `dagster_run_id`; DuckDB holds the trajectories under that
exact key and the scores of that exact model version.

Reverse: which model versions learned from a dataset partition, and which teachers' trajectories
of it are stored (old teachers' rows are kept beside the new ones).
"""

from __future__ import annotations

import json

from ..core.data.sharding import shard_count, shard_of
from ..core.errors import GenSSDError
from ..core.method.versions import FIRST_VERSION
from .db import Store
from .home import Home

PREFIX = "gen-ssd-"
DATASET_DIGEST_TAG = "gen_ssd.dataset_digest"  # tracking/mlflow_client.py writes it beside each input dataset


class LineageError(GenSSDError):
    """The model, version or run asked about is not there."""


def _client(home: Home, tracking_uri: str | None = None):
    from mlflow import MlflowClient

    if not tracking_uri and not (home.root / "mlflow.db").exists():
        raise LineageError(f"no MLflow tracking database in {home.root}: run `gen-ssd pipeline` first")
    return MlflowClient(tracking_uri or home.mlflow_uri)


def _registered_name(client, name: str) -> str:
    """`name` as registered, accepting a short form: gen_ssd, student-gen-ssd, cold_start_student..."""
    slug = name.replace("_", "-")
    for candidate in (name, f"{PREFIX}{slug}", f"{PREFIX}student-{slug}"):
        if client.search_model_versions(f"name = '{candidate}'", max_results=1):
            return candidate
    known = sorted(m.name for m in client.search_registered_models())
    raise LineageError(f"no registered model {name!r}; known: {', '.join(known) or '(none)'}")


def _config_hashes(tags: dict) -> dict[str, str]:
    """dataset -> config hash, from the `config_hash` and `partitions` tags."""
    raw = tags.get("config_hash", "")
    datasets = [d for d in tags.get("partitions", "").split(",") if d]
    if ":" in raw:
        return dict(part.split(":", 1) for part in raw.split(",") if part)
    return {d: raw for d in datasets}


def _dataset_rows(store: Store | None, dataset: str, method: str, teacher: str, student: str | None,
                  config_hash: str, method_version: str = FIRST_VERSION) -> dict:
    row = {"dataset": dataset, "config_hash": config_hash}
    if store is None:
        return row
    sql = ("SELECT count(*), count(*) FILTER (selected), count(DISTINCT problem_id), min(created_at),"
           " max(created_at), any_value(config) FROM trajectories WHERE dataset = ? AND method = ?"
           " AND teacher_version = ? AND config_hash = ? AND method_version = ?")
    params = [dataset, method, teacher, config_hash, method_version]
    if student:
        sql += " AND student_version = ?"
        params.append(student)
    n, selected, problems, first, last, config = store.trajectory_query(sql, params)[0]
    row.update(stored_trajectories=n, selected=selected, problems=problems,
               generated=f"{first} .. {last}" if n else None,
               config=json.loads(config) if config else None)
    return row


def _scores(store: Store | None, model_version: str | None) -> list[dict]:
    if store is None or not model_version:
        return []
    rows = store.query(
        "SELECT benchmark, accuracy, n, grader_version, created_at FROM evaluation_scores WHERE model_version = ?"
        " QUALIFY row_number() OVER (PARTITION BY benchmark ORDER BY created_at DESC) = 1 ORDER BY benchmark",
        [model_version])
    return [{"benchmark": b, "accuracy": a, "n": n, "grader_version": g, "created_at": str(t)}
            for b, a, n, g, t in rows]


def _training_datasets(run) -> list[dict]:
    """The exported datasets (export/) a run logged as its training inputs: name, folder, digest."""
    out = []
    for item in run.inputs.dataset_inputs if run.inputs else []:
        tags = {t.key: t.value for t in item.tags}
        try:
            source = json.loads(item.dataset.source)
        except (TypeError, ValueError):
            source = {}
        out.append({"name": item.dataset.name, "path": source.get("path") or item.dataset.source,
                    "digest": tags.get(DATASET_DIGEST_TAG, item.dataset.digest),
                    "context": tags.get("mlflow.data.context")})
    return out


def _store(home: Home) -> Store | None:
    return Store(home.db_path) if home.db_path.exists() else None


def model_lineage(home: Home, model: str | None = None, version: str | None = None, run_id: str | None = None,
                  tracking_uri: str | None = None) -> dict:
    """What produced one model version: `model` + `version` ("latest" or omitted: the newest), or
    the MLflow `run_id` that trained it."""
    client = _client(home, tracking_uri)
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            raise LineageError(f"no MLflow run {run_id!r}") from exc
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        mv = max(versions, key=lambda v: int(v.version)) if versions else None
    elif model:
        name = _registered_name(client, model)
        if version in (None, "", "latest"):
            mv = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        else:
            try:
                mv = client.get_model_version(name, str(version))
            except Exception as exc:
                raise LineageError(f"{name} has no version {version!r}") from exc
        run = client.get_run(mv.run_id)
    else:
        raise LineageError("say which model: --model NAME [--version N] or --run-id ID")
    tags = {**run.data.tags, **(mv.tags if mv else {})}
    tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    method = tags.get("method", "")
    teacher, student = tags.get("teacher_version"), tags.get("student_version") or tags.get("base_version")
    store = _store(home)
    # a model without the tag learned from its method's first version (distillation.version_tag)
    version = tags.get("method_version", FIRST_VERSION)
    datasets = [_dataset_rows(store, d, method, teacher, student, h, version) for d, h in _config_hashes(tags).items()]
    training = {k: v for k, v in run.data.params.items() if k not in tags}
    return {
        "registered_model": mv.name if mv else None, "version": str(mv.version) if mv else None,
        "source": mv.source if mv else None, "mlflow_run_id": run.info.run_id, "run_name": run.info.run_name,
        "status": run.info.status, "model_version": tags.get("model_version"), "method": method,
        "method_version": version, "teacher_version": teacher, "student_version": tags.get("student_version"),
        "base_version": tags.get("base_version"), "partitions": [d["dataset"] for d in datasets],
        "config_hash": tags.get("config_hash"),
        "trajectories": int(tags["trajectories"]) if tags.get("trajectories", "").isdigit() else None,
        "checkpoint_key": tags.get("checkpoint_key"), "dagster_run_id": tags.get("dagster_run_id"),
        "datasets": datasets, "training_datasets": _training_datasets(run), "training": training,
        "scores": _scores(store, tags.get("model_version")),
    }


def dataset_lineage(home: Home, dataset: str, tracking_uri: str | None = None, shards: int | None = None) -> dict:
    """Which model versions learned from a dataset partition, and whose trajectories of it are stored
    (with `shards` > 1, default $GEN_SSD_SHARDS: how many stored problems fall in each shard)."""
    if shards is None:
        shards = shard_count()
    store = _store(home)
    trajectories = [] if store is None else [
        {"teacher_version": t, "student_version": s, "method": m, "method_version": v, "config_hash": h,
         "trajectories": n, "selected": k, "created_at": str(c)}
        for t, s, m, v, h, n, k, c in store.trajectory_query(
            "SELECT teacher_version, student_version, method, method_version, config_hash, count(*),"
            " count(*) FILTER (selected), min(created_at) FROM trajectories WHERE dataset = ? GROUP BY ALL"
            " ORDER BY 8, 3", [dataset])]
    if store is not None and shards > 1:  # the stored problems of each shard of today's count
        for t in trajectories:
            ids = store.trajectory_query(
                "SELECT DISTINCT problem_id FROM trajectories WHERE dataset = ? AND teacher_version = ?"
                " AND student_version = ? AND method = ? AND method_version = ? AND config_hash = ?",
                [dataset, t["teacher_version"], t["student_version"], t["method"], t["method_version"],
                 t["config_hash"]])
            t["problems_by_shard"] = [0] * shards
            for (pid,) in ids:
                t["problems_by_shard"][shard_of(pid, shards)] += 1
    models = []
    if (home.root / "mlflow.db").exists() or tracking_uri:
        client = _client(home, tracking_uri)
        for registered in client.search_registered_models():
            for mv in client.search_model_versions(f"name = '{registered.name}'"):
                if dataset not in mv.tags.get("partitions", "").split(","):
                    continue
                models.append({
                    "registered_model": mv.name, "version": str(mv.version), "mlflow_run_id": mv.run_id,
                    "method": mv.tags.get("method"), "teacher_version": mv.tags.get("teacher_version"),
                    "student_version": mv.tags.get("student_version"),
                    "config_hash": _config_hashes(mv.tags).get(dataset), "partitions": mv.tags.get("partitions"),
                    "trajectories": mv.tags.get("trajectories"), "model_version": mv.tags.get("model_version"),
                    "created": mv.creation_timestamp})
    models.sort(key=lambda m: (m["registered_model"], int(m["version"])))
    return {"dataset": dataset, "models": models, "trajectories": trajectories, **({"shards": shards} if shards > 1 else {})}


def format_model(info: dict) -> str:
    lines = [f"{info['registered_model'] or '(unregistered)'} v{info['version']}  "
             f"(MLflow run {info['mlflow_run_id']}, {info['status']})"]
    rows = [("model version", info["model_version"]), ("method", info["method"]),
            ("method version", info["method_version"]), ("teacher version", info["teacher_version"]),
            ("student (scorer)", info["student_version"]),
            ("fine-tuned from", info["base_version"]), ("config hash", info["config_hash"]),
            ("trajectories used", info["trajectories"]), ("dagster run", info["dagster_run_id"]),
            ("checkpoint", info["source"])]
    lines += [f"  {k:<18} {v}" for k, v in rows if v not in (None, "")]
    for d in info["datasets"]:
        stored = (f": {d['selected']} selected of {d['stored_trajectories']} stored trajectories, "
                  f"{d['problems']} problems" if "stored_trajectories" in d else ": (no DuckDB in this home)")
        lines.append(f"  dataset {d['dataset']:<10} config {d['config_hash']}{stored}")
    for d in info.get("training_datasets") or []:
        lines.append(f"  trained on         {d['path']}  (digest {d['digest']})")
    if info["training"]:
        lines.append("  training           " + ", ".join(f"{k}={v}" for k, v in sorted(info["training"].items())))
    for s in info["scores"]:
        lines.append(f"  score on {s['benchmark']:<9} {s['accuracy']:.3f} (n={s['n']}, grader {s['grader_version']})")
    return "\n".join(lines)


def format_dataset(info: dict) -> str:
    lines = [f"Models that learned from dataset partition {info['dataset']!r}:"]
    for m in info["models"] or []:
        lines.append(f"  {m['registered_model']} v{m['version']}  teacher {m['teacher_version']}  "
                     f"method {m['method']}  config {m['config_hash']}  trajectories {m['trajectories']}  "
                     f"(run {m['mlflow_run_id']})")
    if not info["models"]:
        lines.append("  (none)")
    lines.append(f"Trajectories of {info['dataset']!r} stored in DuckDB, by teacher version:")
    for t in info["trajectories"] or []:
        lines.append(f"  teacher {t['teacher_version']}  {t['method']:<12} method version {t['method_version']}"
                     f"  config {t['config_hash']}  "
                     f"{t['selected']}/{t['trajectories']} selected  (since {t['created_at']})")
        if t.get("problems_by_shard"):
            lines.append(f"    problems per shard (of {info['shards']}): "
                         + "  ".join(f"{i}-of-{info['shards']}: {n}" for i, n in enumerate(t["problems_by_shard"])))
    if not info["trajectories"]:
        lines.append("  (none)")
    return "\n".join(lines)


def as_json(info: dict) -> str:
    return json.dumps(info, indent=2, default=str)


__all__ = ["LineageError", "model_lineage", "dataset_lineage", "format_model", "format_dataset", "as_json"]
