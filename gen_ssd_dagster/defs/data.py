"""The problems each partition learns from (train side) and is evaluated on (test side).

The demo dataset is generated into the home directory; real datasets are read from the data
directory. Both land in DuckDB's `problems` table, which the later assets read.
"""

import hashlib

import dagster as dg

from ..core.data import benchmarks as core_data
from ..core.demo.world import write_demo_dataset
from ..store.trajectories import write_problems
from ..run_config.datasets import dataset_specs
from .partitions import DATASETS
from .resources import DataResource, StoreResource
from ..run_config.asset_configs import ProblemsConfig


def load_side(dataset: str, side: str, data: DataResource, store: StoreResource, limit: int | None):
    """Problems of one side of a dataset ([] when the dataset has no such side)."""
    spec = dataset_specs()[dataset].get(side)
    if spec is None:
        return []
    if dataset == "demo":
        directory = store.home_dir().data / "demo"
        write_demo_dataset(directory, data.demo_train, data.demo_test, data.demo_seed)
        return core_data.load_problems(spec, data_dir=directory, limit=limit)
    return core_data.load_problems(spec, data_dir=data.real_data_dir(), limit=limit)


def _materialize(context, side: str, config: ProblemsConfig, data: DataResource, store: StoreResource):
    dataset = context.partition_key
    problems = load_side(dataset, side, data, store, config.max_problems)
    write_problems(store.store(), problems, side, context.run.run_id)
    digest = hashlib.sha256("\n".join(f"{p.problem_id}\t{p.question}\t{p.gold}" for p in problems).encode())
    first = problems[0] if problems else None
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest.hexdigest()[:16]),
        metadata={"dataset": dataset, "side": side, "n_problems": len(problems),
                  "example": dg.MetadataValue.md(f"**{first.problem_id}** {first.question}\n\n gold: `{first.gold}`"
                                                 if first else f"(no {side} side for {dataset})")})


@dg.asset(group_name="data", partitions_def=DATASETS, kinds={"duckdb"})
def problems(context: dg.AssetExecutionContext, config: ProblemsConfig, data: DataResource,
             store: StoreResource) -> dg.MaterializeResult:
    """Training problems of a dataset (its train side): what the teacher solves."""
    return _materialize(context, "train", config, data, store)


@dg.asset(group_name="data", partitions_def=DATASETS, kinds={"duckdb"})
def benchmarks(context: dg.AssetExecutionContext, config: ProblemsConfig, data: DataResource,
               store: StoreResource) -> dg.MaterializeResult:
    """Evaluation problems of a dataset (its test side)."""
    return _materialize(context, "test", config, data, store)
