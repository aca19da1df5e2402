"""The code location: every asset, check and resource of the pipeline, assembled."""

import dagster as dg

from .defs import automation, calibration, checks, comparison, data, distillation, evaluation, models, trajectories
from .defs.resources import DataResource, MLflowResource, ModelsResource, StoreResource, resources_from_env

ASSETS = [
    models.teacher, models.base_student,
    data.problems, data.benchmarks,
    distillation.cold_start_student, calibration.pruning_thresholds,
    trajectories.gen_ssd_trajectories, trajectories.standard_kd_trajectories, trajectories.posthoc_trajectories,
    *distillation.distilled_students,
    evaluation.evaluation_scores,
]
CHECKS = [checks.gen_ssd_not_worse_than_cold_start]
# Experiments over the pipeline (tens of minutes): materialized on request, not by `gen-ssd pipeline`.
EXPERIMENTS = comparison.EXPERIMENT_ASSETS


def resources(home: str = "", models_resource: ModelsResource | None = None, **overrides) -> dict:
    """The default resources, all rooted at one home directory ("" = $GEN_SSD_HOME or ./.gen_ssd_home)."""
    return {
        "store": StoreResource(home=home),
        "mlflow": MLflowResource(home=home),
        "models": models_resource or ModelsResource(),
        "data": DataResource(),
        **overrides,
    }


# $GEN_SSD_CONFIG (a pipeline YAML) sets the models, data and MLflow of what `dagster dev` shows.
defs = dg.Definitions(assets=[*ASSETS, *EXPERIMENTS], asset_checks=CHECKS, resources=resources(**resources_from_env()),
                      jobs=[automation.teacher_refresh_job], sensors=[automation.teacher_change_sensor],
                      schedules=[automation.teacher_check_schedule])
