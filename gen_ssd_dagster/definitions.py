"""The code location: every definition under defs/ (found by `dg.load_from_defs_folder`), the
teacher-change automation conditions, and the resources."""

from pathlib import Path

import dagster as dg

from .defs.automation import with_teacher_automation
from .defs.comparison import EXPERIMENT_ASSETS
from .defs.resources import DataResource, MLflowResource, ModelsResource, StoreResource, resources_from_env

# Experiments over the pipeline (tens of minutes): materialized on request, not by `gen-ssd pipeline`.
EXPERIMENTS = dg.AssetSelection.assets(*EXPERIMENT_ASSETS)
# What `gen-ssd pipeline` materializes (the entry points run these without a daemon): every asset
# but the experiments (the observed teacher, a source asset, is observed, not materialized).
PIPELINE = dg.AssetSelection.all() - EXPERIMENTS


def resources(home: str = "", models_resource: ModelsResource | None = None, **overrides) -> dict:
    """The default resources, all rooted at one home directory ("" = $GEN_SSD_HOME or ./.gen_ssd_home)."""
    return {
        "store": StoreResource(home=home),
        "mlflow": MLflowResource(home=home),
        "models": models_resource or ModelsResource(),
        "data": DataResource(),
        **overrides,
    }


def pipeline_definitions(resource_defs: dict) -> dg.Definitions:
    """Every definition under defs/, the teacher-change conditions applied, with `resource_defs`."""
    found = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(with_teacher_automation(found), dg.Definitions(resources=resource_defs))


@dg.definitions
def defs() -> dg.Definitions:
    # $GEN_SSD_CONFIG (a pipeline YAML) sets the models, data and MLflow of what `dagster dev` shows.
    return pipeline_definitions(resources(**resources_from_env()))
