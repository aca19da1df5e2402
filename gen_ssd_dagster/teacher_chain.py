"""Which teacher version each link of the chain was made from, read from the Dagster instance.

The chain is observed teacher -> `teacher` -> `cold_start_student` -> everything the cold start
scores. Work downstream of the cold start is keyed by (teacher version, cold-start version), so it
must never start while the teacher on disk (or behind the server) is not the one the cold start
was trained from: the automation waits for `chain_is_current`, and the assets that generate check
`check_same_teacher` before any work, in case the teacher changed after their run was launched.
"""

from __future__ import annotations

import dagster as dg

TEACHER = dg.AssetKey("teacher")
OBSERVED_TEACHER = dg.AssetKey("observed_teacher")
COLD_START = dg.AssetKey("cold_start_student")


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey):
    """The latest materialization's record (`storage_id` orders events), or None."""
    records = instance.fetch_materializations(key, limit=1).records
    return records[0] if records and records[0].asset_materialization is not None else None


def _teacher_version(record) -> str | None:
    """The version a `teacher` materialization record holds (its data version)."""
    if record is None:
        return None
    mat = record.asset_materialization
    md = mat.metadata.get("model_version")
    return mat.tags.get("dagster/data_version") or (md.value if md is not None else None)


def last_teacher_version(instance: dg.DagsterInstance) -> str | None:
    """The version of the latest `teacher` materialization (its data version), if any."""
    return _teacher_version(_latest(instance, TEACHER))


def last_observed_version(instance: dg.DagsterInstance) -> str | None:
    """The data version of the latest `observed_teacher` observation, if any."""
    records = instance.fetch_observations(OBSERVED_TEACHER, limit=1).records
    observation = records[0].asset_observation if records else None
    return observation.tags.get("dagster/data_version") if observation is not None else None


def cold_start_teacher_version(instance: dg.DagsterInstance) -> str | None:
    """The teacher version the latest cold start learnt from: its `teacher_version` metadata, or,
    for a cold start that trained nothing (max_problems=0) or predates that metadata, the teacher
    it was materialized after. None when there is no cold start, or it is older than the teacher."""
    cold, teacher = _latest(instance, COLD_START), _latest(instance, TEACHER)
    if cold is None or teacher is None:
        return None
    recorded = cold.asset_materialization.metadata.get("teacher_version")
    if recorded is not None:
        return recorded.value
    return _teacher_version(teacher) if cold.storage_id > teacher.storage_id else None


def chain_is_current(instance: dg.DagsterInstance) -> tuple[bool, str]:
    """(whether work downstream of the cold start may start now, why not). It may when the teacher
    materialized is the one last observed and the cold start was trained from it."""
    teacher, observed = last_teacher_version(instance), last_observed_version(instance)
    if observed is not None and teacher != observed:
        return False, f"the teacher observed ({observed}) is not yet the one materialized ({teacher})"
    cold = cold_start_teacher_version(instance)
    if cold != teacher:
        return False, f"the cold start ({cold or 'none newer than the teacher'}) is not yet from teacher {teacher}"
    return True, ""


def check_same_teacher(context, version: str, cold_start_too: bool) -> None:
    """Refuse to generate when the teacher about to be used is not the one the chain materialized
    (a teacher changed after this run was launched): such work would be keyed by a new teacher and
    an old cold start. Nothing is written; the automation re-runs the chain for the new teacher."""
    materialized = last_teacher_version(context.instance)
    if materialized is not None and version != materialized:
        raise dg.Failure(f"the teacher changed since it was materialized: it is now {version}, the `teacher` asset "
                         f"holds {materialized}. Materialize teacher and cold_start_student first; nothing was written.")
    if cold_start_too:
        cold = cold_start_teacher_version(context.instance)
        if cold is not None and cold != version:
            raise dg.Failure(f"cold_start_student was trained from teacher {cold}, not from the teacher now in use "
                             f"({version}): materialize cold_start_student first; nothing was written.")
