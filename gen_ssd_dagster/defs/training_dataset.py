"""Each method's selected trajectories as a Hugging Face dataset, one per dataset partition.

`training_datasets/<method>` reads the work key its trajectories asset output for every shard of
the dataset (they share one key: the shards are merged here) and writes the folder export/ makes
under <home>/datasets/<dataset>/: Parquet, the card, the plot, the digest. Nothing new in the store
rewrites nothing (same digest, same files). The distilled students read their examples from the
same folders (defs/distillation.py). `push_to_hub` is opt-in (docs/dataset-export.md).
"""

import dagster as dg
from pydantic import Field

from ..core.engines.models import ModelSpec
from ..core.method.methods import METHODS
from ..export import ExportResult, ExportSettings, export_dataset, work_id
from ..export.card import PLOT_FILE
from ..export.hub import HubTarget, push
from ..run_config.datasets import dataset_specs
from ..store.trajectories import WorkKey
from .partitions import DATASETS, SHARDS, TRAJECTORIES, by_dataset
from .resources import ModelsResource, StoreResource
from .trajectories import trajectories_asset_name


class TrainingDatasetConfig(dg.Config):
    """Where the dataset goes besides the home."""

    push_to_hub: bool = Field(default=False, description="also upload the folder to the Hugging Face hub (opt-in)")
    hub_repo_id: str = Field(default="", description="the hub dataset repository, 'user/name'")
    hub_token_env: str = Field(default="HF_TOKEN", description="environment variable holding a hub write token "
                               "(read when pushing, never logged)")
    hub_private: bool = Field(default=True, description="create the repository private")


def source_text(dataset: str) -> str:
    """Where the dataset's train side comes from, for the card."""
    spec = dataset_specs().get(dataset, {}).get("train")
    if spec is None:
        return ""
    where = spec.local_file or (f"hub {spec.hub_id}" + (f" ({spec.hub_config})" if spec.hub_config else ""))
    return f"{where}, split {spec.split}" if where else ""


def export_key(store: StoreResource, key: WorkKey, teacher: ModelSpec, student: ModelSpec) -> ExportResult:
    """The dataset of `key` under the home, written if the store holds anything it does not; the
    messages carry `student`'s system prompt and instruction (how the project's trainer prompts it)."""
    settings = ExportSettings(prompt=student.prompt_settings, shards=SHARDS, teacher=teacher.name_or_path,
                              scorer=student.name_or_path, source=source_text(key.dataset))
    return export_dataset(store.home_dir(), key, settings)


def metadata(result: ExportResult) -> dict:
    return {"path": dg.MetadataValue.path(str(result.path)), "digest": result.digest,
            "rewritten": result.rewritten, **result.counts,
            "parquet_bytes": result.parquet_bytes, "text_bytes": result.text_bytes,
            "card": dg.MetadataValue.path(str(result.path / "README.md")),
            "distributions": dg.MetadataValue.path(str(result.path / PLOT_FILE))}


def training_dataset_asset(method: str) -> dg.AssetsDefinition:
    trajectories = trajectories_asset_name(method)

    @dg.asset(name=method, key_prefix="training_datasets", group_name="training_data", partitions_def=DATASETS,
              kinds={"parquet"}, ins={"work_keys": dg.AssetIn(trajectories, partition_mapping=by_dataset(TRAJECTORIES))},
              description=f"The {method} trajectories of one dataset as a Hugging Face dataset (Parquet + card): "
                          "`default` = the kept rows, `all` = every trajectory with its steps and candidates.")
    def _asset(context: dg.AssetExecutionContext, config: TrainingDatasetConfig, teacher: ModelSpec,
               cold_start_student: ModelSpec, models: ModelsResource, store: StoreResource,
               work_keys: dict[str, WorkKey]) -> dg.MaterializeResult:
        from .distillation import received_keys

        dataset = context.partition_key
        key, = received_keys(method, work_keys, [dataset], models.teacher_version(teacher),
                             models.scorer_version(cold_start_student))
        result = export_key(store, key, teacher, cold_start_student)
        context.log.info(f"{'wrote' if result.rewritten else 'unchanged:'} {result.path} (digest {result.digest})")
        hub = {}
        if config.push_to_hub:
            hub = {"hub_url": dg.MetadataValue.url(push(result.path, HubTarget(
                config.hub_repo_id, config.hub_token_env, config.hub_private), result.digest))}
        command = f"gen-ssd --home {store.home_dir().root} export {work_id(key)}"
        return dg.MaterializeResult(data_version=dg.DataVersion(result.digest[:16]), metadata={
            **metadata(result), "work_id": work_id(key), "export_command": command, **hub})

    return _asset


training_datasets = [training_dataset_asset(m) for m in METHODS]
