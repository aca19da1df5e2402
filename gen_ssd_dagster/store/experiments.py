"""Arms of comparisons and sweeps (core/experiments/comparison.py) in DuckDB: one row each, written as it ends."""

from __future__ import annotations

import json

from ..core.types import ArmResult
from .db import Store

_FIELDS = set(ArmResult.__dataclass_fields__)


def arm_from_json(blob: str) -> ArmResult:
    data = json.loads(blob)
    return ArmResult(**{k: v for k, v in data.items() if k in _FIELDS})


def find_arm(store: Store, arm_key: str) -> tuple[ArmResult, set[str]] | None:
    """The stored arm with this key, and the experiments it is listed in."""
    rows = store.query("SELECT result, experiment FROM experiment_arms WHERE arm_key = ?", [arm_key])
    return (arm_from_json(rows[0][0]), {r[1] for r in rows}) if rows else None


def save_arm(store: Store, arm_key: str, arm: ArmResult, experiment: str, dataset: str, benchmark: str,
             dagster_run_id: str | None = None, mlflow_run_id: str | None = None) -> None:
    """Insert or replace one arm of `experiment` (its key names every input: a replacement is the same work)."""
    with store.transaction() as con:
        con.execute("DELETE FROM experiment_arms WHERE arm_key = ? AND experiment = ?", [arm_key, experiment])
        con.execute(
            "INSERT INTO experiment_arms (arm_key, experiment, kind, label, method, seed, dataset, benchmark,"
            " accuracy, teacher_tokens, result, dagster_run_id, mlflow_run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [arm_key, experiment, arm.kind, arm.label, arm.method, arm.seed, dataset, benchmark, arm.accuracy,
             arm.teacher_tokens, json.dumps(arm.to_dict(), default=str), dagster_run_id, mlflow_run_id])


def experiment_arms(store: Store, experiment: str | None = None, kind: str | None = None) -> list[ArmResult]:
    """The arms of one experiment (default: the latest of `kind`), oldest first."""
    experiment = experiment or latest_experiment(store, kind or "comparison")
    if experiment is None:
        return []
    rows = store.query("SELECT result FROM experiment_arms WHERE experiment = ? ORDER BY created_at, label",
                       [experiment])
    return [arm_from_json(r[0]) for r in rows]


def latest_experiment(store: Store, kind: str) -> str | None:
    rows = store.query("SELECT experiment FROM experiment_arms WHERE kind = ? ORDER BY created_at DESC LIMIT 1",
                       [kind])
    return rows[0][0] if rows else None
