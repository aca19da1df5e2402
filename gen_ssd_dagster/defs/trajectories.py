"""Teacher trajectories per dataset partition: Gen-SSD and the two baselines, one asset each.

All three read the partition's training problems, let the teacher propose and the cold-start
student score, and write trajectories (and Gen-SSD's per-step candidates) to DuckDB in batches,
keyed by (dataset, method, teacher version, student version, config hash). An unchanged
partition re-materializes without generating anything.
"""


import hashlib
import inspect

import dagster as dg

from ..core.config import GenSSDConfig, PostHocConfig, StandardKDConfig, config_dict, config_hash
from ..core.models import ModelSpec
from ..store.resumable import run_resumable
from ..store.trajectories import (WorkKey, candidate_ppls, partition_summary, read_problems,
                                  sample_trajectory)
from . import checks, reporting
from .datasets import DATASETS
from .resources import GPU_POOL, ModelsResource, StoreResource
from .run_config import GenSSDRunConfig, PostHocRunConfig, StandardKDRunConfig, method_config

METHOD_ASSETS = {
    "gen_ssd": ("gen_ssd_trajectories", GenSSDConfig, GenSSDRunConfig),
    "standard_kd": ("standard_kd_trajectories", StandardKDConfig, StandardKDRunConfig),
    "posthoc": ("posthoc_trajectories", PostHocConfig, PostHocRunConfig),
}


def generate(context, method: str, cls, run_config, teacher_spec: ModelSpec, scorer_spec: ModelSpec,
             models: ModelsResource, store_res: StoreResource, dataset: str, problems=None) -> tuple[WorkKey, dict]:
    """Generate (or reuse) the trajectories of one method on one dataset; returns key and summary."""
    store = store_res.store()
    config = method_config(run_config, cls, dataset)
    if problems is None:
        problems = read_problems(store, dataset, "train", run_config.max_problems, run_config.offset)
    teacher, scorer = models.make_teacher(teacher_spec), models.make_scorer(scorer_spec)
    key = WorkKey(dataset, method, teacher.version, scorer.version, config_hash(config))
    report = run_resumable(store, key, config, problems, teacher, scorer, run_config.batch_size,
                           context.run.run_id, context.log.info)
    summary = partition_summary(store, key)
    summary.update(new_problems=report.generated, reused_problems=report.reused, asked_problems=report.total)
    return key, summary


def summary_text(s: dict) -> str:
    """What one materialization did, in a sentence (the numbers are beside it in the metadata)."""
    return (f"{s['problems']} problems -> {s['trajectories']} trajectories: {s['finished']} finished, "
            f"{s['pruned']} pruned, {s['length_capped']} length-capped; {s['selected']} selected for training "
            f"({s['correct']} correct in all); {s['teacher_tokens']} teacher tokens. This run generated "
            f"{s['new_problems']} problems and reused {s['reused_problems']} stored ones.")


def trajectory_asset(method: str) -> dg.AssetsDefinition:
    name, cls, run_cls = METHOD_ASSETS[method]
    # What the asset holds first; the method's knobs (the config docstring) after it, kept as a
    # preformatted block: the UI renders descriptions as markdown and would run the list together.
    label = {"gen_ssd": "Gen-SSD", "standard_kd": "Standard KD", "posthoc": "post-hoc filtering"}[method]
    summary, _, knobs = inspect.cleandoc(cls.__doc__ or "").partition("\n\n")
    description = (f"{label}: teacher trajectories of one dataset partition, stored in DuckDB "
                   f"(`trajectories`, and per-step `candidates` for Gen-SSD); the distilled student "
                   f"learns from the selected ones. {summary}" + (f"\n\n```\n{knobs}\n```" if knobs else ""))
    check_specs = [dg.AssetCheckSpec("no_duplicate_trajectories", asset=name),
                   dg.AssetCheckSpec("acceptance_rate_not_zero", asset=name)]

    @dg.asset(name=name, group_name="trajectories", pool=GPU_POOL, partitions_def=DATASETS, kinds={"duckdb"},
              deps=[dg.AssetDep("problems")], check_specs=check_specs, description=description)
    def _asset(context: dg.AssetExecutionContext, config: run_cls, teacher: ModelSpec,
               cold_start_student: ModelSpec, models: ModelsResource, store: StoreResource) -> dg.MaterializeResult:
        dataset = context.partition_key
        key, s = generate(context, method, cls, config, teacher, cold_start_student, models, store, dataset)
        if s["asked_problems"] == 0:
            context.log.warning(f"dataset {dataset!r} has no training problems: nothing to generate")
        chosen, rejected = candidate_ppls(store.store(), key)
        plot_path = store.home_dir().plots / f"{name}_{dataset}_{key.config_hash}.png"
        version = hashlib.sha256(f"{key}|{s['trajectories']}|{s['problems']}".encode()).hexdigest()[:16]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                "summary": summary_text(s),
                **reporting.clean(s),
                "dataset": dataset, "method": method, "config_hash": key.config_hash,
                "teacher_version": key.teacher_version, "student_version": key.student_version,
                "config": dg.MetadataValue.json(config_dict(method_config(config, cls, dataset))),
                "sample_trajectory": reporting.trajectory_markdown(sample_trajectory(store.store(), key)),
                "ppl_chosen_vs_rejected": reporting.ppl_histogram(chosen, rejected, f"{method} / {dataset}", plot_path),
                "ppl_plot_path": dg.MetadataValue.path(str(plot_path)),
            },
            check_results=[checks.no_duplicates(s, name), checks.acceptance_not_zero(s, name)],
        )

    return _asset


gen_ssd_trajectories = trajectory_asset("gen_ssd")
standard_kd_trajectories = trajectory_asset("standard_kd")
posthoc_trajectories = trajectory_asset("posthoc")
