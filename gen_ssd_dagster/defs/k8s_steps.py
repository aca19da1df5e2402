"""What a step's Kubernetes Job asks for, derived from the Dagster pool of its asset.

Every asset that runs a model is in the `gpu` pool (defs/resources.py GPU_POOL). With
`GEN_SSD_EXECUTOR=k8s` (scale_out.py) each such step's pod requests one `nvidia.com/gpu`, tolerates
the taint GPU nodes usually carry, and is labelled with its pool, without the run config having to
list the steps. The value has the shape of dagster-k8s's `dagster-k8s/config` tag; the run config's
`execution.config.per_step_k8s_config.<op>` is merged over it (e.g. `nvidia.com/gpu: 2`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import dagster as dg

from .resources import GPU_POOL

POOL_LABEL = "gen-ssd/pool"
GPU_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "pod_template_spec_metadata": {"labels": {POOL_LABEL: GPU_POOL}},
}


def gpu_ops(defs: dg.Definitions) -> list[str]:
    """Names of the ops (a step's `op_name`) of every asset in the GPU pool."""
    return sorted({a.node_def.name for a in defs.resolve_asset_graph().assets_defs
                   if a.is_executable and getattr(a.node_def, "pool", None) == GPU_POOL})


def _merge(base: Mapping, over: Mapping) -> dict:
    """`over` wins; mappings merge key by key, lists and scalars are replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def with_gpu_steps(executor_config: Mapping, ops: Iterable[str]) -> dict:
    """The k8s executor's config with GPU_STEP_K8S_CONFIG under each GPU op's own per-step config."""
    per_step = dict(executor_config.get("per_step_k8s_config") or {})
    for op in ops:
        per_step[op] = _merge(GPU_STEP_K8S_CONFIG, per_step.get(op, {}))
    return {**executor_config, "per_step_k8s_config": per_step}


def k8s_executor(defs: dg.Definitions) -> dg.ExecutorDefinition:
    """dagster-k8s's `k8s_job_executor`, same config schema, GPU pool steps given their GPU."""
    from dagster_k8s import k8s_job_executor

    ops = gpu_ops(defs)
    return k8s_job_executor.configured(lambda config: with_gpu_steps(config, ops), name="k8s",
                                       config_schema=k8s_job_executor.config_schema)
