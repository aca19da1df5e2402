"""The student's training: the cold start, then one distilled student per method.

cold_start_student: Standard-KD teacher samples of a few training problems, the correct ones,
teach the base student the teacher's format; it then scores candidates for every method.
distilled_students/<method>: the cold-start student fine-tuned on what that method selected, in
the partitions it is told (`partitions`), read under the work keys its trajectories asset output,
from each dataset's exported folder (defs/training_dataset.py), which its MLflow run logs as inputs.
A dataset cut in shards ($GEN_SSD_SHARDS) is learned from once every one of its shards is
materialized (they share the dataset's one work key).
"""

import dagster as dg

from ..core.method.methods import METHODS
from ..core.method.versions import FIRST_VERSION, method_version
from ..core.engines.models import ModelSpec, model_version
from ..store.trajectories import WorkKey, selected_examples
from .partitions import SHARDS, dataset_partitions
from .resources import GPU_POOL, MLflowResource, ModelsResource, StoreResource
from ..run_config.asset_configs import ColdStartConfig, DistillConfig
from .trajectories import generate, trajectories_asset_name, trajectory_page
from .training_dataset import export_key
from ..export.reading import ExportedExamples
from ..tracking.training_runs import metadata, train_logged


def version_tag(method: str) -> dict:
    """The method version as a lineage tag; none for the first version, so that the models trained
    before versions were recorded keep their checkpoint keys (the tags are part of them)."""
    version = method_version(method)
    return {} if version == FIRST_VERSION else {"method_version": version}


# Its own group: inside "distillation" the group view would loop distillation -> trajectories -> distillation.
# Its code version is that of the Standard-KD samples it learns from.
@dg.asset(group_name="cold_start", pool=GPU_POOL, kinds={"pytorch", "mlflow"},
          code_version=f"standard_kd-{method_version('standard_kd')}", deps=[dg.AssetDep(
    "problems", partition_mapping=dg.SpecificPartitionsPartitionMapping(["demo"]))])
def cold_start_student(context: dg.AssetExecutionContext, config: ColdStartConfig, teacher: ModelSpec,
                       base_student: ModelSpec, models: ModelsResource, store: StoreResource,
                       mlflow: MLflowResource) -> dg.Output[ModelSpec]:
    """The base student fine-tuned on a few correct Standard-KD teacher samples (the format).

    max_problems=0 skips the cold start (an ablation): the base student itself then scores."""
    if config.max_problems == 0:
        context.log.warning("cold start skipped (max_problems=0): the base student is the scorer")
        return dg.Output(base_student, data_version=dg.DataVersion(model_version(base_student)),
                         metadata={"model_version": model_version(base_student), "cold_start": "skipped",
                                   "path": base_student.name_or_path})
    key, summary = generate(context, "standard_kd", config, teacher, base_student, models, store, config.dataset,
                            scored_by_cold_start=False)
    rows = selected_examples(store.store(), key)
    if not rows:
        what = "finished" if config.sampling.keep == "finished" else "was correct"
        raise dg.Failure(f"cold start: none of the teacher's {summary['trajectories']} samples on "
                         f"{config.dataset!r} {what} (keep={config.sampling.keep}); raise max_problems or num_candidates"
                         + ("" if config.sampling.keep == "finished" else ", or set sampling: {keep: finished} for a teacher too weak "
                            "to be right"))
    examples = [(q, text) for _, q, text in rows]
    lineage = {"method": "standard_kd", "partitions": config.dataset, "config_hash": key.config_hash,
               "teacher_version": key.teacher_version, "trajectories": len(examples), **version_tag("standard_kd")}
    model = train_logged(context, "cold_start_student", models.placed(base_student, "student"), examples,
                         config.train.to_core(), store.home_dir().checkpoints, mlflow.session(), mlflow.run_url, lineage)
    return dg.Output(model.spec, data_version=dg.DataVersion(model.version),
                     metadata={**metadata(model), **lineage, "teacher_samples": summary["trajectories"],
                               "examples": len(examples), "teacher_tokens": summary["teacher_tokens"]})


def received_keys(method: str, work_keys: dict[str, WorkKey], partitions: list[str], teacher_version: str,
                  scorer_version: str, shards: int = SHARDS) -> list[WorkKey]:
    """The work key of each dataset in `partitions`, from the trajectories asset's latest
    materializations of every shard of it; each must be this teacher's, this cold-start student's
    and the method's current version's, and all shards of a dataset the same key."""
    current = {"teacher_version": teacher_version, "student_version": scorer_version,
               "method_version": method_version(method)}
    keys = []
    for dataset in partitions:
        by_shard = {p: work_keys.get(p) for p in dataset_partitions(dataset, shards)}
        for partition, key in by_shard.items():
            stale = key and [f"{f} {getattr(key, f)} (now {v})" for f, v in current.items() if getattr(key, f) != v]
            if key is None or stale:
                why = "none materialized" if key is None else "the latest is from " + ", ".join(stale)
                raise dg.Failure(f"no {method} trajectories for partition {partition!r} from this teacher, "
                                 f"cold-start student and method version {method_version(method)} ({why}): "
                                 f"materialize {trajectories_asset_name(method)}[{partition}] first")
        if len(set(by_shard.values())) > 1:
            hashes = ", ".join(f"{p}: config {k.config_hash}" for p, k in by_shard.items())
            raise dg.Failure(f"the shards of {dataset!r} were made with different {method} configs ({hashes}): "
                             f"re-materialize them with one config")
        keys.append(next(iter(by_shard.values())))
    return keys


def distilled_asset(method: str) -> dg.AssetsDefinition:
    trajectories = trajectories_asset_name(method)

    @dg.asset(name=method, key_prefix="distilled_students", group_name="distillation", pool=GPU_POOL,
              kinds={"pytorch", "mlflow"}, ins={"work_keys": dg.AssetIn(trajectories)},
              deps=[dg.AssetKey(["training_datasets", method])],
              description=f"The cold-start student fine-tuned on the {method} trajectories it selected.")
    def _asset(context: dg.AssetExecutionContext, config: DistillConfig, teacher: ModelSpec,
               cold_start_student: ModelSpec, models: ModelsResource, store: StoreResource,
               mlflow: MLflowResource, work_keys: dict[str, WorkKey]) -> dg.Output[ModelSpec]:
        keys = received_keys(method, work_keys, config.partitions, models.teacher_version(teacher),
                             models.scorer_version(cold_start_student))
        # Read back from each dataset's exported folder (written now if the store has anything it lacks).
        exports = [export_key(store, key, teacher, cold_start_student) for key in keys]
        # Streamed from the Parquet files while training: memory stays bounded at any size.
        examples = ExportedExamples.of([e.path for e in exports], [e.digest for e in exports])
        if not len(examples):
            raise dg.Failure(f"{method} selected no trajectory in {config.partitions}: nothing to learn from")
        lineage = {"method": method, "partitions": ",".join(config.partitions),
                   "config_hash": ",".join(f"{k.dataset}:{k.config_hash}" for k in keys),
                   "teacher_version": keys[0].teacher_version, "student_version": keys[0].student_version,
                   "trajectories": len(examples), **version_tag(method)}
        shards = {"shards": SHARDS} if SHARDS > 1 else {}  # not a tag: the same rows, however cut
        def trajectory_pages():  # what the student learned from, step by step (docs/viewer.md)
            return [trajectory_page(store.home_dir(), trajectories, k, refresh=False) for k in keys]

        model = train_logged(context, f"student_{method}", models.placed(cold_start_student, "student"), examples,
                             config.train.to_core(), store.home_dir().checkpoints, mlflow.session(), mlflow.run_url, lineage,
                             trajectory_pages, [(f"{method}/{k.dataset}", e.path, e.digest) for k, e in zip(keys, exports)])
        datasets = {"training_datasets": dg.MetadataValue.json(
            [{"path": str(e.path), "digest": e.digest, "rows": e.counts["kept"]} for e in exports])}
        return dg.Output(model.spec, data_version=dg.DataVersion(model.version),
                         metadata={**metadata(model), **lineage, **shards, **datasets})

    return _asset


distilled_students = [distilled_asset(m) for m in METHODS]
