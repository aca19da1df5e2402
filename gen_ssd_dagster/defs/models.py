"""The models a run starts from: the teacher and the base student.

In the embedded default both are built by the pipeline (`core.demo.models`); a real run names a
hub id or a checkpoint in the `models` resource. Each output carries the model's version as its
Dagster data version, so every downstream materialization records which weights it came from.
"""


import dagster as dg

from ..core.engines.models import ModelSpec, is_partial_fingerprint, model_version
from .resources import ModelsResource, StoreResource


def _model_output(context: dg.AssetExecutionContext, spec: ModelSpec, version: str | None = None) -> dg.Output:
    version = version or model_version(spec)
    _say_if_refingerprinted(context, version)
    return dg.Output(spec, data_version=dg.DataVersion(version), metadata={
        "model_version": version, "name_or_path": spec.name_or_path,
        "revision": spec.revision or "", "dtype": spec.dtype, "gguf_file": spec.gguf_file or "",
        "chat_template": spec.chat_template, "system_prompt": spec.system_prompt or "",
        "instruction": spec.instruction or ""})


@dg.asset(group_name="models", kinds={"pytorch"})
def teacher(context: dg.AssetExecutionContext, models: ModelsResource, store: StoreResource) -> dg.Output[ModelSpec]:
    """The teacher LM that proposes reasoning chunks (demo: a small Llama trained on three solution styles)."""
    spec = models.teacher_spec(store.home_dir(), context.log)
    # A served teacher is identified by what the server reports, not by a local fingerprint.
    return _model_output(context, spec, models.teacher_version(spec))


@dg.asset(group_name="models", kinds={"pytorch"})
def base_student(context: dg.AssetExecutionContext, models: ModelsResource, store: StoreResource) -> dg.Output[ModelSpec]:
    """The student before any distillation (demo: a smaller Llama with its own tokenizer)."""
    return _model_output(context, models.student_spec(store.home_dir(), context.log))


def _say_if_refingerprinted(context: dg.AssetExecutionContext, version: str) -> None:
    """A home made before whole-content fingerprints: its last version of this model read only the
    first and last MiB of each file. Its stored work stays (lineage, viewer) but is not reused,
    since nothing can tell whether those weights are the ones on disk now: say so once."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    previous = event.asset_materialization.tags.get("dagster/data_version") if event and event.asset_materialization else None
    if previous and previous != version and is_partial_fingerprint(previous):
        context.log.warning(
            f"{context.asset_key.to_user_string()} is now identified by the whole content of its files ({version}); "
            f"its last version, {previous}, read only the first and last MiB of each file and cannot tell whether the "
            "weights changed. Work stored under the old version is kept (lineage, viewer) and made again under the new one.")
