"""The code location for a deployment past one machine: the pipeline's definitions, with the step
executor chosen by the environment (see docs/scale-out.md and deploy/).

`GEN_SSD_EXECUTOR`:

* `multiprocess` (default): every step a process beside the run, as `gen-ssd pipeline` and
  `dagster dev` do.
* `celery`: every step a Celery task, run by whichever `dagster-celery worker` takes it, on any
  machine that reaches the broker (`GEN_SSD_CELERY_BROKER`, `GEN_SSD_CELERY_BACKEND`, e.g.
  `redis://host:6379/0` and `/1`). Needs the `celery` extra. Start workers with
  `dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml`; each runs one step
  at a time unless given `-- --concurrency N`.
* `k8s`: every step a Kubernetes Job (`dagster_k8s.k8s_job_executor`; the `k8s` extra), configured
  by run config `execution: {config: {...}}`; steps of the GPU pool request a GPU (defs/k8s_steps.py).

Every process that loads this module (code server, run worker, Celery workers, step pods) must see
the same `GEN_SSD_EXECUTOR`, the same Dagster instance (`DAGSTER_HOME`: Postgres storage across
machines) and the same `GEN_SSD_HOME` (a shared filesystem: DuckDB file, checkpoints, asset
outputs).

The job `generate_trajectories` runs the three trajectory assets of one dataset partition (one
shard of it with $GEN_SSD_SHARDS > 1: a backfill over the shards runs them in parallel); it is
tagged `gen_ssd/teacher: generate` so that a run-queue limit on that tag bounds how many partitions
share the teacher at once (deploy/dagster.yaml).
"""

from __future__ import annotations

import os

import dagster as dg

from . import definitions as laptop  # not `import defs`: one Definitions at module scope
from .defs.k8s_steps import k8s_executor
from .defs.partitions import TRAJECTORIES

EXECUTORS = ("multiprocess", "celery", "k8s")
TEACHER_TAG = "gen_ssd/teacher"


def executor_from_env(pipeline: dg.Definitions) -> dg.ExecutorDefinition:
    """The executor `GEN_SSD_EXECUTOR` names; an unknown name or a missing package says what to do."""
    name = os.environ.get("GEN_SSD_EXECUTOR", "multiprocess").strip().lower()
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as exc:
            raise ImportError("GEN_SSD_EXECUTOR=celery needs dagster-celery: "
                              "pip install 'gen-ssd-dagster[celery]'") from exc
        for var in ("GEN_SSD_CELERY_BROKER", "GEN_SSD_CELERY_BACKEND"):
            if not os.environ.get(var):
                raise ValueError(f"GEN_SSD_EXECUTOR=celery needs {var} (e.g. redis://host:6379/0)")
        # Read from the environment where the run starts; the workers read the same variables
        # through deploy/celery.yaml.
        return celery_executor.configured(
            {"broker": {"env": "GEN_SSD_CELERY_BROKER"}, "backend": {"env": "GEN_SSD_CELERY_BACKEND"}},
            name="celery",
        )
    if name == "k8s":
        try:
            return k8s_executor(pipeline)
        except ImportError as exc:
            raise ImportError("GEN_SSD_EXECUTOR=k8s needs dagster-k8s: pip install 'gen-ssd-dagster[k8s]'") from exc
    raise ValueError(f"GEN_SSD_EXECUTOR={name!r}: expected one of {', '.join(EXECUTORS)}")


generate_trajectories = dg.define_asset_job(
    "generate_trajectories",
    selection=dg.AssetSelection.assets("gen_ssd_trajectories", "standard_kd_trajectories",
                                       "posthoc_trajectories"),
    partitions_def=TRAJECTORIES,
    tags={TEACHER_TAG: "generate"},
    description="Teacher trajectories of one dataset partition, all three methods (upstream assets "
                "must be materialized).",
)

def _deployment() -> dg.Definitions:
    # One Definitions at module scope: `dagster ... -m gen_ssd_dagster.scale_out` refuses two.
    pipeline = laptop.defs()
    return dg.Definitions.merge(pipeline, dg.Definitions(jobs=[generate_trajectories],
                                                         executor=executor_from_env(pipeline)))


defs = _deployment()
