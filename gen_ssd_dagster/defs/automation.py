"""Re-run when the teacher changes: observe the teacher's version, request an ordered re-run.

What is observed (never assumed), by `observe_teacher`:

* a served teacher (`models.teacher_url` set): what the server reports (`OpenAITeacher.version`);
* a local checkpoint (and the built demo teacher): `model_version`'s content fingerprint (config
  plus sizes and first/last MiB of each file: cheap, changes with any retraining);
* a hub id: `name@<commit>` from `HfApi().model_info(...).sha` when online; with
  HF_HUB_OFFLINE=1 (or the hub unreachable) the configured revision `name@main`, said so in the
  tick's message (a branch that moved is then not noticed until the hub is reachable again).
  The `teacher` asset pins a hub branch to that commit too (`ModelsResource.teacher_spec`), so
  the version compared here is the one the trajectories are keyed by.

How it is modelled, and why: Dagster's docs recommend declarative automation for "run assets when
their upstream changed", and sensors for "react to a change in an external system, keeping state in
a cursor". The change here is external (a checkpoint on disk, a hub branch, a server), must not
run the pipeline on every manual materialization of `teacher`, and needs an explicit order over
two partitioning schemes: `teacher` -> `cold_start_student` -> trajectories[every partition] ->
`distilled_students/*` -> `evaluation_scores`. A sensor whose cursor is the last version it
acted on does exactly that, and it requests the re-run as ONE asset backfill
(`RunRequest.for_asset_graph_subset`): the backfill daemon then launches the runs in dependency
order (all trajectory partitions before the unpartitioned students, and the students before the
evaluation), which separate RunRequests cannot guarantee. An observable source asset feeding
eager automation conditions would re-run the same assets but turns every upstream change into a
re-run and gives no control over which partitions; it also needs the automation sensor running.

Two instigators share one decision (`decide`):

* `teacher_check_schedule` (RUNNING by default, cron from $GEN_SSD_TEACHER_CHECK_CRON, default
  daily at 03:00) - the periodic check. Dagster 1.13's schedule daemon launches runs only (it
  ignores `asset_graph_subset`), so on a change the schedule submits the backfill itself with the
  same `instance.add_backfill(PartitionBackfill.from_asset_graph_subset(...))` call the sensor
  daemon makes, and its tick reports the backfill id. It has no cursor: it compares with the
  version of the latest `teacher` materialization and skips while a backfill for the observed
  version is still in progress.
* `teacher_change_sensor` (STOPPED by default; turn it on in the UI for a faster reaction,
  interval $GEN_SSD_TEACHER_SENSOR_INTERVAL seconds, default 300) - same check, with a cursor.

When nothing changed, both skip with the version in the message. Partitions re-run:
$GEN_SSD_REFRESH_PARTITIONS = "materialized" (default: every partition a trajectory asset was
ever materialized for), "all", or a comma list. The backfill's runs use the code location's
default run config (a backfill carries one run config for runs of different op subsets, so none is
set). Old outputs stay: trajectories are keyed by teacher version in DuckDB, and MLflow adds new
model versions beside the old ones.

`run_subset_in_process` executes a requested subset without a daemon (tests, `gen-ssd` users),
in the same order the backfill would.
"""

from __future__ import annotations

import dataclasses

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from ..core.engines.backends import model_version
from ..core.demo.models import MARKER
from ..core.engines.models import ModelSpec, resolve_hub_revision
from ..store import Home
from .datasets import DATASETS
from .resources import ModelsResource, StoreResource
from .run_config import DistillConfig
from .trajectories import METHOD_ASSETS

TEACHER = dg.AssetKey("teacher")
TRAJECTORY_ASSETS = [dg.AssetKey(name) for name, _, _ in METHOD_ASSETS.values()]
REFRESH_SELECTION = dg.AssetSelection.assets(TEACHER).downstream()
VERSION_TAG = "gen_ssd/teacher_version"
PREVIOUS_TAG = "gen_ssd/previous_teacher_version"
CRON_ENV, INTERVAL_ENV, PARTITIONS_ENV = ("GEN_SSD_TEACHER_CHECK_CRON", "GEN_SSD_TEACHER_SENSOR_INTERVAL",
                                          "GEN_SSD_REFRESH_PARTITIONS")
DEFAULT_CRON = "0 3 * * *"


@dataclass(frozen=True)
class TeacherObservation:
    version: str | None  # None: nothing to compare (server down, checkpoint missing, demo not built)
    source: str  # server | checkpoint | demo | hub | hub-unresolved | missing
    detail: str = ""


def observe_teacher(models: ModelsResource, home: Home) -> TeacherObservation:
    """The teacher's current version, read from where it lives (no model is loaded)."""
    if models.teacher_url:  # a server: only it knows what it serves
        from ..core.engines.openai_backend import OpenAITeacher

        try:
            return TeacherObservation(OpenAITeacher(models.teacher_url, models.teacher, max_retries=1).version,
                                      "server", models.teacher_url)
        except Exception as exc:  # unreachable server: no verdict, never a re-run
            return TeacherObservation(None, "missing", f"teacher server {models.teacher_url}: {exc}")
    if models.teacher == "demo":  # the layout of ModelsResource._demo_paths; never built here
        path = home.root / "models" / "demo" / "teacher"
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
    commit, why = resolve_hub_revision(spec.name_or_path, spec.revision)
    if commit:
        return TeacherObservation(model_version(dataclasses.replace(spec, revision=commit)), "hub",
                                  f"{spec.revision or 'main'} -> {commit}")
    return TeacherObservation(model_version(spec), "hub-unresolved",
                              f"{why}: revision {spec.revision or 'main'!r} not resolved to a commit, "
                              "so a moved branch is not detected")


def last_teacher_version(instance: dg.DagsterInstance) -> str | None:
    """The version of the latest `teacher` materialization (its data version), if any."""
    event = instance.get_latest_materialization_event(TEACHER)
    if event is None or event.asset_materialization is None:
        return None
    mat = event.asset_materialization
    md = mat.metadata.get("model_version")
    return mat.tags.get("dagster/data_version") or (md.value if md is not None else None)


def refresh_partitions(instance: dg.DagsterInstance, setting: str | None = None) -> list[str]:
    """Which dataset partitions re-run (see the module docstring)."""
    keys = DATASETS.get_partition_keys()
    setting = (setting if setting is not None else os.environ.get(PARTITIONS_ENV, "")).strip() or "materialized"
    if setting == "all":
        return list(keys)
    if setting != "materialized":
        return [k for k in (s.strip() for s in setting.split(",")) if k in keys]
    done = set().union(*(instance.get_materialized_partitions(k) for k in TRAJECTORY_ASSETS))
    return [k for k in keys if k in done] or [p for p in DistillConfig().partitions if p in keys]


def refresh_subset(asset_graph, partitions: Sequence[str]) -> AssetGraphSubset:
    """`teacher` and everything downstream; partitioned assets on `partitions`."""
    by_key, whole = {}, set()
    for key in REFRESH_SELECTION.resolve(asset_graph):
        partitions_def = asset_graph.get(key).partitions_def
        if partitions_def is None:
            whole.add(key)
        elif partitions:
            by_key[key] = partitions_def.empty_subset().with_partition_keys(partitions)
    return AssetGraphSubset(partitions_subsets_by_asset_key=by_key, non_partitioned_asset_keys=whole)


def _in_progress(instance: dg.DagsterInstance, version: str) -> str | None:
    """Id of a backfill still running for this teacher version, if any."""
    for backfill in instance.get_backfills(status=BulkActionStatus.REQUESTED, limit=50):
        if backfill.tags.get(VERSION_TAG) == version:
            return backfill.backfill_id
    return None


@dataclass(frozen=True)
class Decision:
    observation: TeacherObservation
    previous: str | None
    request: dg.RunRequest | None
    message: str
    partitions: tuple[str, ...] = ()


def decide(instance: dg.DagsterInstance, asset_graph, models: ModelsResource, home: Home,
           previous: str | None = None) -> Decision:
    """Compare the observed teacher version with `previous` (a cursor), else with the latest
    `teacher` materialization; on a change (to a version not materialized already), the backfill
    request of teacher + downstream."""
    obs = observe_teacher(models, home)
    if obs.version is None:
        return Decision(obs, previous, None, f"teacher version not observed: {obs.detail}")
    materialized = last_teacher_version(instance)
    previous = previous or materialized
    if previous is None:
        return Decision(obs, None, None, f"teacher version {obs.version} ({obs.source}); no teacher "
                        "materialized yet: the first pipeline run records it")
    if obs.version in (previous, materialized):  # (materialized: someone re-ran the pipeline by hand)
        note = f"; {obs.detail}" if obs.source == "hub-unresolved" else ""
        return Decision(obs, previous, None, f"teacher version {obs.version} unchanged ({obs.source}){note}")
    running = _in_progress(instance, obs.version)
    if running:
        return Decision(obs, previous, None, f"teacher version {obs.version}: re-run already in progress "
                        f"(backfill {running})")
    partitions = refresh_partitions(instance)
    tags = {VERSION_TAG: obs.version, PREVIOUS_TAG: previous, "gen_ssd/trigger": "teacher_change"}
    request = dg.RunRequest.for_asset_graph_subset(refresh_subset(asset_graph, partitions), tags=tags)
    return Decision(obs, previous, request, f"teacher version changed {previous} -> {obs.version} "
                    f"({obs.source}): re-running partitions {', '.join(partitions)} and downstream",
                    tuple(partitions))


def _asset_graph(context):
    if context.repository_def is not None:
        return context.repository_def.asset_graph
    from ..definitions import defs  # noqa: PLC0415 (the definitions import this module)

    return defs.resolve_asset_graph()


@dg.sensor(
    name="teacher_change_sensor", asset_selection=REFRESH_SELECTION,
    minimum_interval_seconds=int(os.environ.get(INTERVAL_ENV, "300")),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="When the teacher's observed version changes (checkpoint fingerprint, hub commit, "
                "server report), backfill its trajectories on every partition, the students and the evaluation.")
def teacher_change_sensor(context: dg.SensorEvaluationContext, models: ModelsResource,
                          store: StoreResource) -> dg.SensorResult:
    d = decide(context.instance, _asset_graph(context), models, store.home_dir(), context.cursor or None)
    cursor = d.observation.version or context.cursor
    if d.request is None:
        return dg.SensorResult(skip_reason=dg.SkipReason(d.message), cursor=cursor)
    context.log.info(d.message)
    return dg.SensorResult(run_requests=[d.request], cursor=cursor)


teacher_refresh_job = dg.define_asset_job(
    "teacher_refresh", selection=REFRESH_SELECTION,
    description="The teacher and everything downstream (one partition per run; the schedule and "
                "the sensor launch it as a backfill over every partition instead).")


def submit_backfill(instance: dg.DagsterInstance, request: dg.RunRequest) -> str:
    """What the sensor daemon does with a RunRequest carrying an asset_graph_subset."""
    backfill_id = make_new_backfill_id()
    instance.add_backfill(PartitionBackfill.from_asset_graph_subset(
        backfill_id=backfill_id, backfill_timestamp=time.time(), tags=dict(request.tags),
        dynamic_partitions_store=instance, asset_graph_subset=request.asset_graph_subset,
        title="teacher changed", description=None, run_config=None))
    return backfill_id


@dg.schedule(
    name="teacher_check_schedule", cron_schedule=os.environ.get(CRON_ENV, DEFAULT_CRON), job=teacher_refresh_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Periodic teacher check: on a new teacher version, submits the backfill of its trajectories "
                "(every partition), the students and the evaluation; otherwise skips.")
def teacher_check_schedule(context: dg.ScheduleEvaluationContext, models: ModelsResource, store: StoreResource):
    d = decide(context.instance, _asset_graph(context), models, store.home_dir())
    if d.request is None:
        return dg.SkipReason(d.message)
    backfill_id = submit_backfill(context.instance, d.request)
    context.log.info(f"{d.message}: backfill {backfill_id}")
    return dg.SkipReason(f"{d.message}: submitted backfill {backfill_id} (no single run launched)")


# ---------------------------------------------------------------- executing a subset without a daemon

def subset_stages(asset_graph, subset: AssetGraphSubset) -> list[tuple[list[dg.AssetKey], list[str | None]]]:
    """The runs a backfill of `subset` amounts to, in order: consecutive (topologically) assets of the
    same partitioning share runs, one per partition (None: an unpartitioned run)."""
    partitioned = subset.partitions_subsets_by_asset_key
    order = [k for level in asset_graph.toposorted_asset_keys_by_level
             for k in sorted(level, key=lambda k: (k in partitioned, k)) if k in subset.asset_keys]
    stages: list[tuple[list[dg.AssetKey], list[str | None]]] = []
    for key in order:
        parts = (sorted(subset.get_partitions_subset(key).get_partition_keys())
                 if key in partitioned else [None])
        if stages and stages[-1][1] == parts:
            stages[-1][0].append(key)
        else:
            stages.append(([key], parts))
    return stages


def run_subset_in_process(subset: AssetGraphSubset, home: Home, run_config: dict | None = None,
                          resource_overrides: dict | None = None, tags: dict | None = None,
                          log: Callable[[str], None] = print) -> list[dg.ExecuteInProcessResult]:
    """Materialize `subset` on the home's instance, stage by stage as `subset_stages` orders it.
    Stops at the first failed run."""
    from ..definitions import ASSETS, CHECKS, defs, resources  # noqa: PLC0415
    from ..instance import get_instance
    from ..pipeline import _only_selected

    os.environ["GEN_SSD_HOME"] = str(home.root)
    instance = get_instance(home)
    results = []
    for keys, parts in subset_stages(defs.resolve_asset_graph(), subset):
        selection = [k.to_user_string() for k in keys]
        for part in parts:
            result = dg.materialize(
                [*ASSETS, *CHECKS], instance=instance, selection=selection, partition_key=part,
                resources=resources(str(home.root), **(resource_overrides or {})),
                run_config=_only_selected(dict(run_config or {}), selection),
                tags={"gen_ssd/home": str(home.root), **(tags or {})}, raise_on_error=False)
            log(f"[refresh] {', '.join(selection)}{f' [{part}]' if part else ''}: "
                f"{'ok' if result.success else 'FAILED'} (run {result.run_id})")
            results.append(result)
            if not result.success:
                return results
    return results
