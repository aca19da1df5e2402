"""Teacher trajectories per dataset partition: Gen-SSD and the two baselines, one asset each.

All three read the partition's training problems, let the teacher propose and the cold-start
student score, and write trajectories (and Gen-SSD's per-step candidates) to DuckDB in batches,
keyed by (dataset, method, method version, teacher version, student version, config hash). An
unchanged partition re-materializes without generating anything. Each asset's Dagster code version is
its method's version (core/method/versions.py): bumping it shows the asset stale, and its next
materialization is new work beside the old rows. Each partition's value is that key (`WorkKey`,
stored by defs/work_keys.py): the distilled students receive the keys of the partitions they learn from.

With $GEN_SSD_SHARDS > 1 a partition is one shard of a dataset (defs/partitions.py): its step runs
only the problems `shard_of` puts in that shard. The work key has no shard: every shard of a dataset
writes under the dataset's one key, problem by problem, so re-sharding reuses all stored work.
"""


import dataclasses
import hashlib
import inspect
from pathlib import Path

import dagster as dg

from ..core.data.sharding import shard_problems
from ..core.method.calibration import calibrated
from ..core.method.config import Calibration, GenSSDConfig, PostHocConfig, StandardKDConfig, config_dict, config_hash
from ..core.method.methods import METHODS
from ..core.method.versions import method_version
from ..core.engines.models import ModelSpec
from .too_long import without_too_long
from ..core.progress import Reporter
from ..core.errors import ConfigError
from ..core.experiments.budget import BudgetMeter, seed_order
from ..generation import run_resumable, run_within_budget
from ..store.trajectories import (WorkKey, candidate_ppls, partition_summary, read_problems,
                                  sample_trajectory)
from ..viewer import export_partition
from . import checks
from .. import asset_metadata
from .partitions import TRAJECTORIES, by_dataset, dataset_shard
from ..teacher_chain import check_same_teacher
from .work_keys import WorkKeyIOManager
from .resources import GPU_POOL, ModelsResource, StoreResource
from ..run_config.asset_configs import (GenSSDTrajectoriesConfig, PostHocTrajectoriesConfig, StandardKDTrajectoriesConfig,
                                        method_config)

# The Launchpad's form of each method's knobs (the methods themselves: core/method/methods.py).
RUN_CONFIGS = {GenSSDConfig: GenSSDTrajectoriesConfig, StandardKDConfig: StandardKDTrajectoriesConfig,
               PostHocConfig: PostHocTrajectoriesConfig}


def trajectories_asset_name(method: str) -> str:
    """The name of `method`'s trajectories asset: gen_ssd_trajectories, ..."""
    return f"{method}_trajectories"


def calibrated_method_config(run_config, dataset: str, calibration: dict | None = None):
    """The method's core config; Gen-SSD's thresholds replaced by `calibration` (a `Calibration` as a dict)."""
    config = method_config(run_config, dataset)
    return calibrated(config, Calibration(**calibration)) if calibration else config


def generate(context, method: str, run_config, teacher_spec: ModelSpec, scorer_spec: ModelSpec,
             models: ModelsResource, store_res: StoreResource, dataset: str, problems=None,
             calibration: dict | None = None, scored_by_cold_start: bool = True,
             shard: tuple[int, int] = (0, 1)) -> tuple[WorkKey, dict]:
    """Generate (or reuse) the trajectories of one method on one dataset (of its `shard` = (index,
    count) only); returns key and summary (of everything stored under the key).
    `scored_by_cold_start`: False for the cold start's own samples (scored by the base student)."""
    budget = getattr(run_config, "teacher_token_budget", None)
    if budget is not None:
        BudgetMeter(budget)  # a bad value fails here, before any model loads
        if shard[1] > 1:
            raise ConfigError(f"{trajectories_asset_name(method)}: teacher_token_budget takes a prefix of the whole "
                              f"dataset's problem stream, which a shard ($GEN_SSD_SHARDS={shard[1]}) does not have: "
                              "set it to null (max_problems then bounds the work) or run unsharded")
    store = store_res.store()
    config = calibrated_method_config(run_config, dataset, calibration)
    if problems is None:
        problems = read_problems(store, dataset, "train", run_config.max_problems, run_config.offset)
    if shard[1] > 1:
        problems = shard_problems(problems, *shard)
    teacher, scorer = models.make_teacher(teacher_spec), models.make_scorer(scorer_spec, served=scored_by_cold_start)
    check_same_teacher(context, teacher.version, cold_start_too=scored_by_cold_start)
    problems, too_long = without_too_long(context, problems, teacher, scorer, run_config.on_bad_row)
    key = WorkKey(dataset, method, teacher.version, scorer.version, config_hash(config))
    progress = Reporter(f"{method}/{dataset}", context.log.info, unit="problems")
    if budget is None:
        report, spending = run_resumable(store, key, config, problems, teacher, scorer, run_config.batch_size,
                                         context.run.run_id, progress), {}
    else:
        bought = run_within_budget(store, key, config, seed_order(problems, config.sampling.seed), teacher, scorer,
                                   budget, run_config.batch_size, context.run.run_id, progress, context.log.info)
        key = dataclasses.replace(key, budget_problems=tuple(bought.problem_ids))
        # the summary below is of these problems: its teacher_tokens is what the budget bought
        report, spending = bought.resume, {"teacher_token_budget": budget, "budget_pool_exhausted": bought.pool_exhausted}
    summary = partition_summary(store, key)
    summary.update(new_problems=report.generated, reused_problems=report.reused, asked_problems=report.total,
                   **too_long, **spending)
    return key, summary


def summary_text(s: dict) -> str:
    """What one materialization did, in a sentence (the numbers are beside it in the metadata)."""
    return (f"{s['problems']} problems -> {s['trajectories']} trajectories: {s['finished']} finished, "
            f"{s['pruned']} pruned, {s['length_capped']} length-capped; {s['selected']} selected for training "
            f"({s['correct']} correct in all); {s['teacher_tokens']} teacher tokens. This run generated "
            f"{s['new_problems']} problems and reused {s['reused_problems']} stored ones."
            + (f" Teacher-token budget {s['teacher_token_budget']}: the problems above are the seed's first that fit"
               + (" (every problem fit: the pool ran out first)." if s["budget_pool_exhausted"] else ".")
               if "teacher_token_budget" in s else ""))


def latest_calibration(instance: dg.DagsterInstance, dataset: str) -> dict:
    """The thresholds of the latest `pruning_thresholds` materialization of `dataset`."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("pruning_thresholds"), asset_partitions=[dataset]), limit=1)
    if not result.records:
        raise dg.Failure(f"gen_ssd_trajectories: thresholds is 'calibrated' but pruning_thresholds has no "
                         f"materialization for {dataset!r}: materialize it first (or set thresholds: hand-set)")
    meta = result.records[0].asset_materialization.metadata
    # a materialization from before rules had names was read by teacher_quantile (the field's default)
    return {f.name: meta[f.name].value for f in dataclasses.fields(Calibration) if f.name in meta}


def trajectory_page(home, name: str, key: WorkKey, refresh: bool = True) -> Path:
    """The self-contained viewer page of one trajectories materialization's work (docs/viewer.md);
    written anew when `refresh`, else only if missing (every materialization rewrites it)."""
    version = f"_v{key.method_version}" if key.version_suffix() else ""  # the first version keeps its old name
    page = home.plots / f"{name}_{key.dataset}_{key.config_hash}{version}.html"
    if refresh or not page.is_file():
        export_partition(home, key.dataset, page, key.config_hash, key.teacher_version,
                         method_version=key.method_version)
    return page


def _materialize(context, method: str, config, teacher: ModelSpec, cold_start_student: ModelSpec,
                 models: ModelsResource, store: StoreResource, calibration: dict | None = None):
    """Generate (or reuse) one partition's trajectories: its work key as the output, with the summary,
    config and PPL plot as metadata (the key's fields are the IO manager's), then the checks' results."""
    name = trajectories_asset_name(method)
    dataset, shard, shards = dataset_shard(context.partition_key)
    key, s = generate(context, method, config, teacher, cold_start_student, models, store, dataset,
                      calibration=calibration, shard=(shard, shards))
    where = f"dataset {dataset!r}" + (f" shard {shard} of {shards}" if shards > 1 else "")
    if s["asked_problems"] == 0:
        context.log.warning(f"{where} has no training problems: nothing to generate")
    chosen, rejected = candidate_ppls(store.store(), key)
    home = store.home_dir()
    plot_path = home.plots / f"{name}_{dataset}_{key.config_hash}.png"
    viewer_page = trajectory_page(home, name, key)
    # The shards of a dataset share its key (and summary); each is its own partition's data.
    sharding = f"|shard={shard}/{shards}" if shards > 1 else ""
    budget = f"|budget={s['teacher_token_budget']}" if "teacher_token_budget" in s else ""
    identity = f"{key}{key.version_suffix()}|{s['trajectories']}|{s['problems']}{sharding}{budget}"
    version = hashlib.sha256(identity.encode()).hexdigest()[:16]
    yield dg.Output(
        key,
        data_version=dg.DataVersion(version),
        metadata={
            "summary": summary_text(s),
            **({"shard": f"{shard} of {shards}", "summary_covers": f"every shard of {dataset} stored so far"}
               if shards > 1 else {}),
            **asset_metadata.clean(s),
            "config": dg.MetadataValue.json(config_dict(calibrated_method_config(config, dataset, calibration))),
            "thresholds": "calibrated" if calibration else "hand-set",
            # how the engines ran (not part of the key: only their quantization changes a version)
            "engines": dg.MetadataValue.json(models.engine_record("teacher_engine", "scorer_engine")),
            "sample_trajectory": asset_metadata.trajectory_markdown(sample_trajectory(store.store(), key)),
            "ppl_chosen_vs_rejected": asset_metadata.ppl_histogram(chosen, rejected, f"{method} / {dataset}", plot_path),
            "ppl_plot_path": dg.MetadataValue.path(str(plot_path)),
            # every step's candidates: one HTML file to open, or the viewer over the whole home
            "trajectory_viewer": dg.MetadataValue.path(str(viewer_page)),
            "viewer_command": f"gen-ssd --home {home.root} view",
        },
    )
    yield checks.no_duplicates(s, name)
    yield checks.acceptance_not_zero(s, name)


def trajectory_asset(method: str) -> dg.AssetsDefinition:
    name, cls = trajectories_asset_name(method), METHODS[method].config_class
    run_cls = RUN_CONFIGS[cls]
    # What the asset holds first; the method's knobs (the config docstring) after it, kept as a
    # preformatted block: the UI renders descriptions as markdown and would run the list together.
    summary, _, knobs = inspect.cleandoc(cls.__doc__ or "").partition("\n\n")
    description = (f"{METHODS[method].label}: teacher trajectories of one dataset partition, stored in DuckDB "
                   f"(`trajectories`, and per-step `candidates` for Gen-SSD); the distilled student "
                   f"learns from the selected ones. {summary}" + (f"\n\n```\n{knobs}\n```" if knobs else ""))
    check_specs = [dg.AssetCheckSpec("no_duplicate_trajectories", asset=name),
                   dg.AssetCheckSpec("acceptance_rate_not_zero", asset=name)]

    # Gen-SSD depends on the calibrated thresholds (lineage), and reads them (the partition's latest
    # pruning_thresholds materialization) only when told to.
    # A shard reads its dataset's partition of each.
    upstream = ["problems", *(["pruning_thresholds"] if method == "gen_ssd" else [])]
    deps = [dg.AssetDep(a, partition_mapping=by_dataset(TRAJECTORIES)) for a in upstream]

    @dg.asset(name=name, group_name="trajectories", pool=GPU_POOL, partitions_def=TRAJECTORIES, kinds={"duckdb"},
              deps=deps, check_specs=check_specs, description=description, code_version=method_version(method),
              io_manager_def=WorkKeyIOManager())
    def _asset(context: dg.AssetExecutionContext, config: run_cls, teacher: ModelSpec,
               cold_start_student: ModelSpec, models: ModelsResource, store: StoreResource):
        use_calibration = getattr(config, "thresholds", "hand-set") == "calibrated"
        dataset = dataset_shard(context.partition_key)[0]
        calibration = latest_calibration(context.instance, dataset) if use_calibration else None
        yield from _materialize(context, method, config, teacher, cold_start_student, models, store, calibration)

    return _asset


trajectory_assets = [trajectory_asset(m) for m in METHODS]
