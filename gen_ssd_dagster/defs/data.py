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


# Skipped rows named one by one in the log and the metadata; past this, counted.
NAMED_SKIPS = 200


def load_side(dataset: str, side: str, data: DataResource, store: StoreResource, limit: int | None,
              on_bad_row: str = "error") -> core_data.LoadedProblems:
    """Problems of one side of a dataset (none when the dataset has no such side), and the rows skipped."""
    spec = dataset_specs()[dataset].get(side)
    if spec is None:
        return core_data.LoadedProblems([], [])
    if dataset == "demo":
        directory = store.home_dir().data / "demo"
        write_demo_dataset(directory, data.demo_train, data.demo_test, data.demo_seed)
    else:
        directory = data.real_data_dir()
    return core_data.load_problems_checked(spec, data_dir=directory, limit=limit, on_bad_row=on_bad_row)


def _skipped_rows(context, skipped: list[core_data.SkippedRow]) -> dict:
    """Each skipped row logged and listed (up to NAMED_SKIPS), and their count."""
    if not skipped:
        return {"n_skipped_rows": 0}
    named = skipped[:NAMED_SKIPS]
    more = f"\n\n... and {len(skipped) - len(named)} more" if len(skipped) > len(named) else ""
    context.log.warning(f"on_bad_row=skip: {len(skipped)} bad row(s) left out:\n"
                        + "\n".join(f"{s.where}: {s.reason}" for s in named) + more)
    table = "| row | why |\n|---|---|\n" + "\n".join(
        f"| {s.where} | {s.reason.replace('|', '/')[:300]} |" for s in named)
    return {"n_skipped_rows": len(skipped), "skipped_rows": dg.MetadataValue.md(table + more)}


def _materialize(context, side: str, config: ProblemsConfig, data: DataResource, store: StoreResource):
    dataset = context.partition_key
    loaded = load_side(dataset, side, data, store, config.max_problems, config.on_bad_row)
    problems = loaded.problems
    write_problems(store.store(), problems, side, context.run.run_id)
    digest = hashlib.sha256("\n".join(f"{p.problem_id}\t{p.question}\t{p.gold}" for p in problems).encode())
    first = problems[0] if problems else None
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest.hexdigest()[:16]),
        metadata={"dataset": dataset, "side": side, "n_problems": len(problems), **_skipped_rows(context, loaded.skipped),
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
