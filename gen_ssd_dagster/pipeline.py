"""Materialize the whole asset graph in-process on a persistent instance in the home directory.

This is what `gen-ssd pipeline` runs: the one `Definitions` that `dagster dev` shows
(`definitions.pipeline_definitions`), its asset job executed in-process on a selection of it, so the
runs, lineage and asset checks are visible in the UI afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dagster as dg

from .core.method.methods import METHODS
from .defs.resources import resources_from_config
from .definitions import PIPELINE, pipeline_definitions, resources
from .instance import get_instance
from .store import Home


def run_pipeline(home: Home, partition: str = "demo", run_config: dict | None = None,
                 resource_overrides: dict | None = None, log: Callable[[str], None] = print,
                 selection=None) -> dg.ExecuteInProcessResult:
    """One run over every pipeline asset (or `selection`, which may name experiments too),
    partitioned assets on `partition`."""
    home.export()  # child code (and datasets.yaml lookup) sees the same home
    instance = get_instance(home)
    definitions = home_definitions(home, resource_overrides)
    graph = definitions.resolve_asset_graph()
    keys = dg.AssetSelection.from_coercible(PIPELINE if selection is None else selection).resolve(graph)
    _one_partitioning(graph, keys)
    selection = sorted(key.to_user_string() for key in keys)
    run_config = dict(_only_selected(_partition_defaults(run_config or {}, partition), selection))
    run_config.setdefault("loggers", {"console": {"config": {"log_level": "INFO"}}})
    started = time.perf_counter()
    result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=partition if any(graph.get(k).partitions_def is not None for k in keys) else None,
        tags={"gen_ssd/home": str(home.root)},
        raise_on_error=False,
        asset_selection=sorted(keys),
    )
    log(f"[pipeline] run {result.run_id} {'succeeded' if result.success else 'FAILED'} "
        f"in {time.perf_counter() - started:.0f}s (Dagster instance: {instance.root_directory})")
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            cause = error.cause or error
            log(f"[pipeline]   {event.step_key} failed: {cause.message.strip().splitlines()[-1]}")
    return result


def _one_partitioning(graph, keys) -> None:
    """One run materializes one partition: a selection mixing the datasets and the dataset x shard
    partitions ($GEN_SSD_SHARDS > 1) cannot run as one, so say how to run it instead."""
    defs = {tuple(d.get_partition_keys()) for k in keys if (d := graph.get(k).partitions_def) is not None}
    if len(defs) > 1:
        from .core.errors import ConfigError

        raise ConfigError("the selection mixes dataset partitions and the trajectories' dataset x shard "
                          "partitions (GEN_SSD_SHARDS > 1): run the upstream assets on the dataset ('demo'), "
                          "then each trajectories shard ('demo|0-of-N', ...) or a backfill of them "
                          "(docs/scale-out.md)")


def home_definitions(home: Home, resource_overrides: dict | None = None) -> dg.Definitions:
    """The code location's definitions (those of `dagster dev`) with resources rooted at `home`."""
    return pipeline_definitions(resources(str(home.root), **(resource_overrides or {})))


def _partition_defaults(run_config: dict, partition: str) -> dict:
    """On a partition other than demo, the cold start, distillation and evaluation default to it too
    (explicit settings win)."""
    if partition == "demo":
        return run_config
    ops = {k: {"config": dict((v or {}).get("config", {}))} for k, v in run_config.get("ops", {}).items()}
    ops.setdefault("cold_start_student", {"config": {}})["config"].setdefault("dataset", partition)
    for method in METHODS:
        ops.setdefault(f"distilled_students__{method}", {"config": {}})["config"].setdefault("partitions", [partition])
    ops.setdefault("evaluation_scores", {"config": {}})["config"].setdefault("benchmarks", [partition])
    return {**run_config, "ops": ops}


def _only_selected(run_config: dict, selection) -> dict:
    """Drop the op config of assets outside `selection` (a list of asset key strings); Dagster
    rejects config for ops that are not in the run."""
    if not selection or not isinstance(selection, (list, tuple)) or "ops" not in run_config:
        return run_config
    names = {str(s).replace("/", "__") for s in selection}
    return {**run_config, "ops": {k: v for k, v in run_config["ops"].items() if k in names}}


def load_config(path: str | None) -> tuple[dict, dict]:
    """A pipeline YAML: Dagster run config (`ops:`, as in the Launchpad) plus `resources:` settings
    for `models`, `data` and `mlflow`. Returns (run_config, resource overrides)."""
    if not path:
        return {}, {}
    import yaml

    raw = yaml.safe_load(open(path)) or {}
    return raw, resources_from_config(raw.pop("resources", {}) or {}, path)
