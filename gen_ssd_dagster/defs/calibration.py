"""pruning_thresholds: Gen-SSD's pruning thresholds, calibrated from the cold-start student, per dataset.

The teacher solves held-back train problems; the cold-start student scores each line; a threshold
rule reads max_ppl and ppl_ratio from what it saw (core/method/calibration.py, docs/thresholds.md).
The teacher samples with the knobs of `gen_ssd_trajectories` in the same run, so the thresholds fit
the paths they will prune;
gen_ssd_trajectories uses them when its `thresholds` is "calibrated", and records them with every
trajectory.
"""

import dataclasses
import hashlib
import json

import dagster as dg

from ..core.method.calibration import calibrate, summary
from ..core.engines.models import ModelSpec
from ..store.trajectories import read_problems
from .. import asset_metadata
from .partitions import DATASETS
from .resources import GPU_POOL, MLflowResource, ModelsResource, StoreResource
from ..run_config.asset_configs import CalibrationRunConfig, gen_ssd_of_run


@dg.asset(group_name="cold_start", pool=GPU_POOL, partitions_def=DATASETS, kinds={"mlflow"},
          deps=[dg.AssetDep("problems")])
def pruning_thresholds(context: dg.AssetExecutionContext, config: CalibrationRunConfig, teacher: ModelSpec,
                       cold_start_student: ModelSpec, models: ModelsResource, store: StoreResource,
                       mlflow: MLflowResource) -> dg.Output[dict]:
    """max_ppl and ppl_ratio read by a threshold rule (docs/thresholds.md) from the cold-start student's
    PPLs of the teacher's own lines on held-back problems of this dataset: thresholds that follow the student."""
    dataset = context.partition_key
    if config.offset is None:  # held back from the end: the methods take theirs from the front
        problems = read_problems(store.store(), dataset, "train")[-config.max_problems:]
    else:
        problems = read_problems(store.store(), dataset, "train", config.max_problems, config.offset)
    if not problems:
        raise dg.Failure(f"pruning_thresholds: dataset {dataset!r} has no train problems after offset "
                         f"{config.offset}; lower `offset` or store more problems")
    gen_ssd = gen_ssd_of_run(context.run.run_config, dataset)
    teacher_backend, scorer = models.make_teacher(teacher), models.make_scorer(cold_start_student)
    context.log.info(f"calibrating on {len(problems)} held-back {dataset} problems by {config.rule} "
                     f"(quantile {config.quantile})")
    record, ppls = calibrate(problems, teacher_backend, scorer, gen_ssd, config.quantile, rule=str(config.rule))
    facts = {**dataclasses.asdict(record), **summary(ppls)}
    context.log.info(f"calibrated by {record.rule}: max_ppl {record.max_ppl:.4g} and ppl_ratio {record.ppl_ratio:.4g}, "
                     f"from {record.first_lines} first-line PPLs (median "
                     f"{facts['first_line_ppl_median']}) and {record.later_lines} later-line ratios (median "
                     f"{facts['later_line_ratio_median']}) over {record.texts} teacher solutions")
    plot_path = store.home_dir().plots / f"pruning_thresholds_{dataset}.png"
    plot = asset_metadata.calibration_plot(ppls, record, f"{dataset}: cold-start PPL of the teacher's lines", plot_path)
    session = mlflow.session()
    tags = {"dataset": dataset, "dagster_run_id": context.run.run_id, "teacher_version": teacher_backend.version,
            "student_version": scorer.version}
    with session.run("pruning_thresholds", tags=tags) as run:
        run.log(params={"rule": record.rule, "quantile": record.quantile, "held_back_problems": len(problems),
                        "first_problem": problems[0].problem_id},
                metrics={"max_ppl": record.max_ppl, "ppl_ratio": record.ppl_ratio})
        run.log_file(plot_path, "plots")
    value = dataclasses.asdict(record)
    version = hashlib.sha256(json.dumps([value, teacher_backend.version, scorer.version]).encode()).hexdigest()[:16]
    return dg.Output(value, data_version=dg.DataVersion(version), metadata={
        **asset_metadata.clean(facts), "teacher_version": teacher_backend.version, "student_version": scorer.version,
        "ppls": plot, "mlflow_run": dg.MetadataValue.url(mlflow.run_url(session.experiment_id, run.run_id))})
