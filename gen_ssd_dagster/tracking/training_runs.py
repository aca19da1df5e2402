"""Fine-tune, cache and log a student: one helper shared by the cold start and the distillation.

A checkpoint lives in <home>/checkpoints/<name>/<key>, where the key hashes the base model's
version, the exact training examples and the training config: re-materializing with unchanged
inputs reuses the checkpoint and its MLflow model version instead of training again.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ..core.engines.models import ModelSpec, model_version
from ..core.progress import Reporter
from ..core.training.examples import ExampleSource, InMemoryExamples, example_source
from ..core.training.sft import TrainConfig, fine_tune
from .mlflow_client import MLflowSession

DONE = "train_result.json"


@dataclass
class TrainedModel:
    spec: ModelSpec
    version: str
    mlflow_run_id: str
    registered_model: str
    registered_version: str
    steps: int
    final_loss: float
    reused: bool
    mlflow_url: str = ""  # the run in the MLflow UI


def train_logged(context, name: str, base: ModelSpec, examples: list[tuple[str, str]] | ExampleSource, config: TrainConfig,
                 checkpoints: Path, session: MLflowSession, run_url: Callable[[str, str], str], lineage: dict,
                 attachments: Callable[[], list[Path]] = list,
                 datasets: Sequence[tuple[str, Path, str]] = ()) -> TrainedModel:
    """Fine-tune `base` on `examples` (or reuse the same earlier run) into `checkpoints`/<name>/<key>
    and log it to MLflow through `session` as a version of the registered model `gen-ssd-<name>` whose
    tags carry `lineage`; `run_url(experiment_id, run_id)` is where the MLflow UI shows a run. The
    files that `attachments` returns (made only for a new run) are logged beside the model, under
    `trajectories/`. `datasets`: (name, folder, digest) of the exported datasets the examples were read
    from, logged as the run's training inputs (not part of the key: the examples are)."""
    base_version = model_version(base)
    # The lineage is part of the key: a model version's tags must name the teacher and data that
    # made it, so a new teacher gets a new model version even if its examples happen to be the same.
    # The config's recipe only: the same run on 1 or 8 processes gives the same model (fp32 rounding aside).
    # A list is hashed as it is; a streamed source (an exported dataset) by its digest, never read whole.
    source = example_source(examples)
    data = [list(p) for p in source.pairs] if isinstance(source, InMemoryExamples) else {"digest": source.digest()}
    blob = json.dumps([base_version, data, config.recipe(), lineage], sort_keys=True).encode()
    key = hashlib.sha256(blob).hexdigest()[:16]
    out_dir = checkpoints / name / key
    registered = f"gen-ssd-{name.replace('_', '-')}"
    done = out_dir.parent / f"{key}.{DONE}"  # beside the checkpoint: inside it would change its fingerprint
    if done.is_file():
        saved = json.loads(done.read_text())
        existing = session.latest_version(registered, "checkpoint_key", key)
        if existing is not None:
            context.log.info(f"{name}: reusing checkpoint {out_dir} (MLflow {registered} v{existing.version})")
            spec = base.with_weights(out_dir)
            return TrainedModel(spec, model_version(spec), existing.run_id, registered, str(existing.version),
                                saved["steps"], saved["final_loss"], reused=True,
                                mlflow_url=run_url(session.experiment_id, existing.run_id))

    tags = {"checkpoint_key": key, "base_version": base_version, "n_examples": len(source),
            "dagster_run_id": context.run.run_id, **lineage}
    with session.run(name, tags=tags) as run:
        run.log(params={**dataclasses.asdict(config), "base_model": base.name_or_path, **tags})
        for dataset_name, folder, digest in datasets:
            run.log_dataset(folder, digest, dataset_name)
        report = Reporter(name, context.log.info)  # a bar in a terminal, a sentence now and then in the event log

        def progress(info: dict) -> None:
            report(info)
            run.log(metrics={"train_loss": info["loss"]})

        # config.processes > 1: torchrun processes; their logs reach the `...training.launch` logger
        result = fine_tune(base, source, out_dir, config, progress)
        # Before the fingerprint (the marker is a file of the checkpoint directory, so the version
        # must include it); it is only trusted together with a registered MLflow version (above).
        # Written then renamed: a crash mid-write leaves no half marker for the next run to trip on.
        partial = done.with_suffix(".partial")
        partial.write_text(json.dumps({"steps": result.steps, "final_loss": result.final_loss}))
        os.replace(partial, done)
        spec = result.spec
        version = model_version(spec)
        run.log(metrics={"final_loss": result.final_loss, "steps": result.steps,
                         "train_tokens": result.train_tokens, "train_seconds": result.seconds},
                tags={"model_version": version, "precision": result.precision,
                      "processes": result.processes})
        run.log_artifacts(result.path, "model")
        for path in attachments():
            run.log_file(path, "trajectories")
        reg_version = run.register(registered, "model", tags={**tags, "model_version": version})
    return TrainedModel(spec, version, run.run_id, registered, reg_version, result.steps, result.final_loss,
                        reused=False, mlflow_url=run_url(session.experiment_id, run.run_id))


def metadata(m: TrainedModel) -> dict:
    return {"model_version": m.version, "path": dg.MetadataValue.path(m.spec.name_or_path),
            "mlflow_run": dg.MetadataValue.url(m.mlflow_url), "mlflow_run_id": m.mlflow_run_id,
            "registered_model": f"{m.registered_model} v{m.registered_version}", "steps": m.steps,
            "final_loss": round(m.final_loss, 4), "reused_checkpoint": m.reused}


