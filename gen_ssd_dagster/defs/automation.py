"""Re-run when the teacher changes: declarative automation over an observable teacher.

The outside world is the observable source asset `observed_teacher`: its data version is the
teacher's version as read from where the teacher lives (`observe_teacher`, no model loaded):

* a served teacher (`models.teacher_url` set): what the server reports, the declared version and
  a greedy probe's answer (`OpenAITeacher.version`, docs/served-teacher-version.md);
* a local checkpoint (and the built demo teacher): `model_version`'s fingerprint of every byte of
  every file (hashed once per file version, then read from a digest cache: no weights re-read);
* a hub id: `name@<commit>` from `HfApi().model_info(...).sha` when online; with
  HF_HUB_OFFLINE=1 (or the hub unreachable) the configured revision `name@main`, said so in the
  observation's metadata (a branch that moved is then not noticed until the hub is reachable).
  The `teacher` asset pins a hub branch to that commit too (`ModelsResource.teacher_spec`), so
  the version observed here is the one the trajectories are keyed by.

When nothing can be observed (server down, checkpoint missing, demo not built) the observation
repeats the last known version: no news is never a change.

`teacher_check_schedule` (RUNNING by default, cron $GEN_SSD_TEACHER_CHECK_CRON, default daily at
03:00) runs the job `observe_teacher`, which records one observation. The automation conditions
below (`with_teacher_automation`, applied by definitions.py) then re-run, evaluated every
$GEN_SSD_AUTOMATION_INTERVAL_S seconds (default 30) by the sensor `teacher_change_automation`
(RUNNING by default; the daemon of `dagster dev` runs it, in the code server, since three
conditions read the instance in Python):

1. `teacher`, with `cold_start_student` in the same run, while the version observed last is not
   the version materialized (so the first observation of an unchanged teacher runs nothing);
2. `pruning_thresholds` and the three trajectory assets on every partition they were ever
   materialized for, once step 1's run is done and the cold start was trained from the teacher
   observed last (a change that arrives mid-chain supersedes the rest of that chain);
3. `distilled_students/*` once no trajectories run of this automation is in flight and their
   own trajectories were re-done after the latest cold start, `evaluation_scores` in the same run.

Steps 2 and 3 only follow runs that this sensor launched (run tag `gen_ssd/trigger`), so a
teacher or cold start materialized by hand, or `gen-ssd pipeline`, triggers nothing. The cold
start and the trajectories also check, before generating, that the teacher they are about to use
is the one the chain materialized (`teacher_chain.py`). The reasons for this design
(and not a sensor) are in docs/pipeline.md. Old outputs stay: trajectories are keyed by teacher
version in DuckDB, and MLflow adds new model versions beside the old ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ..core.demo.models import MARKER
from ..core.engines.models import model_version, pinned_to_commit
from ..core.method.methods import METHODS
from ..store import Home
from ..teacher_chain import (COLD_START, OBSERVED_TEACHER, TEACHER, chain_is_current,
                                          last_observed_version, last_teacher_version)
from .resources import ModelsResource, StoreResource
from .trajectories import trajectories_asset_name

AC = dg.AutomationCondition
THRESHOLDS = dg.AssetKey("pruning_thresholds")
TRAJECTORY_ASSETS = [dg.AssetKey(trajectories_asset_name(method)) for method in METHODS]
STUDENTS = [dg.AssetKey(["distilled_students", method]) for method in METHODS]
EVALUATION = dg.AssetKey("evaluation_scores")
# What a teacher change re-runs (the experiments downstream of the teacher are run on request only).
REFRESH_SELECTION = dg.AssetSelection.assets(TEACHER, COLD_START, THRESHOLDS, *TRAJECTORY_ASSETS, *STUDENTS,
                                             EVALUATION)
TRIGGER_TAGS = {"gen_ssd/trigger": "teacher_change"}
CRON_ENV = "GEN_SSD_TEACHER_CHECK_CRON"
DEFAULT_CRON = "0 3 * * *"
# Seconds between two evaluations of the conditions (Dagster's default for such sensors is 30).
INTERVAL_ENV, DEFAULT_INTERVAL_S = "GEN_SSD_AUTOMATION_INTERVAL_S", 30


@dataclass(frozen=True)
class TeacherObservation:
    version: str | None  # None: nothing to compare (server down, checkpoint missing, demo not built)
    source: str  # server | checkpoint | demo | hub | hub-unresolved | missing
    detail: str = ""


def observe_teacher(models: ModelsResource, home: Home) -> TeacherObservation:
    """The teacher's current version, read from where it lives (no model is loaded)."""
    if servers := ", ".join(url for url, _ in models.teacher_servers()):  # a server: only it knows what it serves
        try:  # built as the teacher asset builds it (declared version, probe, prompt): the same version
            return TeacherObservation(models.make_teacher(models.configured_spec("teacher"), max_retries=0).version,
                                      "server", servers)
        except Exception as exc:  # unreachable server: no verdict, never a re-run
            return TeacherObservation(None, "missing", f"teacher server {servers}: {exc}")
    if models.teacher == "demo":  # where ModelsResource._demo_paths builds it; never built here
        path = home.demo_models / "teacher"
        if not (path.parent / MARKER).is_file():
            return TeacherObservation(None, "missing", f"demo teacher not built yet in {path.parent}")
        return TeacherObservation(model_version(models.configured_spec("teacher", str(path))), "demo", str(path))
    # Every setting the teacher asset loads with (GGUF file, prompts): the same version it records.
    spec = models.configured_spec("teacher")
    if spec.is_local:
        path = Path(spec.name_or_path).expanduser()
        weights = spec.gguf_file or "config.json"
        if not (path / weights).is_file():
            return TeacherObservation(None, "missing", f"teacher checkpoint {path} has no {weights}")
        return TeacherObservation(model_version(spec), "checkpoint", str(path))
    pinned, why = pinned_to_commit(spec)
    if not why:
        return TeacherObservation(model_version(pinned), "hub", f"{spec.revision or 'main'} -> {pinned.revision}")
    return TeacherObservation(model_version(spec), "hub-unresolved",
                              f"{why}: revision {spec.revision or 'main'!r} not resolved to a commit, "
                              "so a moved branch is not detected")


@dg.observable_source_asset(
    key=OBSERVED_TEACHER, group_name="models",
    description="The teacher's version as read from where it lives (checkpoint fingerprint, hub commit, "
                "server report); a new data version re-runs the teacher and everything downstream.")
def observed_teacher(context, models: ModelsResource, store: StoreResource) -> dg.ObserveResult:
    obs = observe_teacher(models, store.home_dir())
    metadata = {"source": obs.source, "detail": obs.detail, "observed": obs.version is not None}
    # Not observed: repeat what is known, so an outage never reads as a change.
    version = obs.version or last_observed_version(context.instance) or last_teacher_version(context.instance)
    if obs.version is None:
        context.log.warning(f"teacher version not observed: {obs.detail}")
    return dg.ObserveResult(data_version=dg.DataVersion(version) if version else None, metadata=metadata)


observe_teacher_job = dg.define_asset_job(
    "observe_teacher", selection=dg.AssetSelection.assets(OBSERVED_TEACHER),
    description="Records the teacher's current version (an observation of observed_teacher).")

teacher_check_schedule = dg.ScheduleDefinition(
    name="teacher_check_schedule", job=observe_teacher_job, cron_schedule=os.environ.get(CRON_ENV, DEFAULT_CRON),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Periodic teacher check: observes the teacher's version; teacher_change_automation re-runs "
                "the pipeline when it changed.")

teacher_change_automation = dg.AutomationConditionSensorDefinition(
    "teacher_change_automation", target=REFRESH_SELECTION, run_tags=TRIGGER_TAGS,
    use_user_code_server=True,  # two conditions read the instance in Python (_ObservedTeacherIsNew, _ChainIsCurrent)
    minimum_interval_seconds=int(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the teacher-change conditions: teacher and cold start, then the trajectories on "
                "every materialized partition, then the students and the evaluation.")


# ---------------------------------------------------------------- the conditions, one per step

def _after(deps: list[dg.AssetKey]) -> dg.AutomationCondition:
    """True once one of `deps` was re-done by this automation (or is requested in this tick, when
    it can share the run), until the asset is requested; waits while any dependency runs."""
    # (a run that also did this asset, as the teacher's does for the cold start, does not count twice)
    refreshed = ((AC.newly_updated() & AC.executed_with_tags(tag_values=TRIGGER_TAGS) & ~AC.executed_with_root_target())
                 | AC.will_be_requested())
    return (AC.any_deps_match(refreshed).allow(dg.AssetSelection.assets(*deps)).since_last_handled()
            & ~AC.any_deps_in_progress() & ~AC.in_progress())


class _InstanceCondition(dg.AutomationCondition):
    """A condition on what the instance has recorded, true or false for every partition at once.
    Subclasses set `label` and `text` and say whether it `holds`."""

    label = text = ""

    @property
    def name(self) -> str:
        return self.label

    @property
    def description(self) -> str:
        return self.text

    def holds(self, context: dg.AutomationContext) -> bool:
        raise NotImplementedError

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        return dg.AutomationResult(context, context.candidate_subset if self.holds(context) else context.get_empty_subset())


class _ObservedTeacherIsNew(_InstanceCondition):
    """The teacher observed last is not the one materialized. Dagster counts the first observation
    ever recorded as an update even when it repeats the materialized version: this tells them apart."""

    label, text = "observed_teacher_is_new", "the observed teacher version differs from the materialized one"

    def holds(self, context: dg.AutomationContext) -> bool:
        instance = context.asset_graph_view.instance
        observed = last_observed_version(instance)
        return observed is not None and observed != last_teacher_version(instance)


class _ChainIsCurrent(_InstanceCondition):
    """Work downstream of the cold start waits while a newer teacher is observed but not yet
    materialized, or the cold start is not yet trained from the teacher materialized: a change
    that arrives while a chain runs supersedes the rest of that chain."""

    label, text = "chain_is_current", "the cold start is trained from the teacher last observed"

    def holds(self, context: dg.AutomationContext) -> bool:
        return chain_is_current(context.asset_graph_view.instance)[0]


class _NoRunInFlightFor(_InstanceCondition):
    """No run of this automation that materializes any of `keys` is queued or running. Dagster's
    in-progress conditions look at direct dependencies only, and one run materializes its assets
    one step at a time: without this, a student would start as soon as its own trajectories were
    written, while its siblings' were still being generated, and the evaluation with it."""

    def __init__(self, keys: list[dg.AssetKey], stage: str):
        self.keys = frozenset(keys)
        self.label, self.text = f"no_run_in_flight_for_{stage}", f"no automation run of the {stage} in flight"

    def holds(self, context: dg.AutomationContext) -> bool:
        runs = context.asset_graph_view.instance.get_runs(filters=dg.RunsFilter(
            tags=TRIGGER_TAGS, statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                         dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
        return not any(self.keys & (run.asset_selection or frozenset()) for run in runs)


class _RedoneSinceColdStart(_InstanceCondition):
    """This asset was materialized after the latest cold start. Asked of a student's trajectories
    and of the evaluation's students: a student never trains, and the evaluation never scores, on
    what an earlier cold start selected, even when the next stage is requested in the same tick."""

    label, text = "redone_since_cold_start", "materialized after the latest cold start"

    def holds(self, context: dg.AutomationContext) -> bool:
        instance = context.asset_graph_view.instance
        cold = instance.fetch_materializations(COLD_START, limit=1).records
        mine = instance.fetch_materializations(context.key, limit=1).records
        return bool(mine) and (not cold or mine[0].storage_id > cold[0].storage_id)


CHAIN_IS_CURRENT = _ChainIsCurrent()
TRAJECTORIES_REDONE = AC.all_deps_match(_RedoneSinceColdStart()).allow(dg.AssetSelection.assets(*TRAJECTORY_ASSETS))
# the students may be requested in this very tick, to share the evaluation's run
STUDENTS_REDONE = AC.all_deps_match(_RedoneSinceColdStart() | AC.will_be_requested()).allow(
    dg.AssetSelection.assets(*STUDENTS))
_UPSTREAM_OF_STUDENTS = [TEACHER, COLD_START, THRESHOLDS, *TRAJECTORY_ASSETS]
# Level, not edge: requested while the observed version is not the materialized one, so a change
# observed in the very tick a teacher run ends is not lost. A failed teacher run is retried once
# per new observation, not on every tick.
_NEW_OBSERVATION = AC.any_deps_match(AC.newly_updated()).allow(dg.AssetSelection.assets(OBSERVED_TEACHER))
TEACHER_CHANGED = (_ObservedTeacherIsNew() & ~AC.execution_failed().since(_NEW_OBSERVATION)
                   & ~AC.missing() & ~AC.in_progress()).with_label("teacher_changed")
CONDITIONS = {
    TEACHER: TEACHER_CHANGED,
    # in the teacher's run whenever it is requested (never a tick later), or after a teacher run
    COLD_START: (AC.any_deps_match(AC.will_be_requested()).allow(dg.AssetSelection.assets(TEACHER))
                 | _after([TEACHER])).with_label("after_teacher"),
    # only partitions materialized before: a teacher change re-does work, it starts none
    **{key: (_after([TEACHER, COLD_START, THRESHOLDS]) & ~AC.missing() & CHAIN_IS_CURRENT).with_label("after_cold_start")
       for key in [THRESHOLDS, *TRAJECTORY_ASSETS]},
    **{key: (_after(TRAJECTORY_ASSETS) & CHAIN_IS_CURRENT & TRAJECTORIES_REDONE
             & _NoRunInFlightFor(_UPSTREAM_OF_STUDENTS, "trajectories")).with_label("after_trajectories")
       for key in STUDENTS},
    EVALUATION: (_after(STUDENTS) & CHAIN_IS_CURRENT & STUDENTS_REDONE
                 & _NoRunInFlightFor([*_UPSTREAM_OF_STUDENTS, *STUDENTS], "students")).with_label("after_students"),
}


def _with_condition(spec: dg.AssetSpec) -> dg.AssetSpec:
    if spec.key not in CONDITIONS:
        return spec
    deps = [*spec.deps, dg.AssetDep(OBSERVED_TEACHER)] if spec.key == TEACHER else spec.deps
    return spec.replace_attributes(automation_condition=CONDITIONS[spec.key], deps=deps)


def with_teacher_automation(defs: dg.Definitions) -> dg.Definitions:
    """`defs` with the teacher-change conditions on the pipeline's assets (`teacher` now depends on
    `observed_teacher`). Rebuilt by hand: `Definitions.map_asset_specs` refuses a Definitions that
    holds a source asset."""
    assets = [dg.map_asset_specs(_with_condition, [a])[0] if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec))
              else a for a in defs.assets or []]
    return dg.Definitions(assets=assets, asset_checks=defs.asset_checks, schedules=defs.schedules,
                          sensors=defs.sensors, jobs=defs.jobs, resources=defs.resources, executor=defs.executor,
                          loggers=defs.loggers, metadata=defs.metadata, component_tree=defs.component_tree)
