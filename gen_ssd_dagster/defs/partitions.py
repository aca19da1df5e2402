"""The partitions, read when the definitions load: one per dataset a run may name
(`run_config/datasets.py`), and for the trajectories, dataset x shard when $GEN_SSD_SHARDS > 1.

With one shard (the default) the trajectories keep the plain dataset partitions ("demo"); with N
they are Dagster's MultiPartitionsDefinition of the datasets and the shards "0-of-N" ..
"N-1-of-N" (keys like "demo|2-of-4"). The count is in the shard key so that after re-sharding no
shard inherits the materializations of a different cut. Why a multi-partition and not a dynamic
one: docs/scale-out.md.
"""

from __future__ import annotations

import dagster as dg

from ..core.data.sharding import shard_count
from ..run_config.datasets import dataset_specs

DATASETS = dg.StaticPartitionsDefinition(list(dataset_specs()))
SHARDS = shard_count()
DATASET, SHARD = "dataset", "shard"


def shard_key(shard: int, shards: int) -> str:
    return f"{shard}-of-{shards}"


def trajectory_partitions(shards: int) -> dg.PartitionsDefinition:
    """The trajectories' partitions for `shards` shards per dataset."""
    if shards == 1:
        return DATASETS
    return dg.MultiPartitionsDefinition({
        DATASET: DATASETS, SHARD: dg.StaticPartitionsDefinition([shard_key(i, shards) for i in range(shards)])})


TRAJECTORIES = trajectory_partitions(SHARDS)


def by_dataset(partitions_def: dg.PartitionsDefinition) -> dg.PartitionMapping | None:
    """How a trajectories partition maps to its dataset's partition of a dataset-partitioned asset."""
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=DATASET)
    return None


def dataset_shard(partition_key: str) -> tuple[str, int, int]:
    """(dataset, shard, shards) of a trajectories partition key: "demo" is ("demo", 0, 1) and
    "demo|2-of-4" is ("demo", 2, 4)."""
    if isinstance(partition_key, dg.MultiPartitionKey):
        dims = partition_key.keys_by_dimension
        dataset, shard = dims[DATASET], dims[SHARD]
    elif "|" in partition_key:
        dataset, shard = str(partition_key).rsplit("|", 1)
    else:
        return str(partition_key), 0, 1
    index, _, count = shard.partition("-of-")
    return dataset, int(index), int(count)


def dataset_partitions(dataset: str, shards: int = SHARDS) -> list[str]:
    """The trajectories partition keys of every shard of `dataset`."""
    if shards == 1:
        return [dataset]
    return [f"{dataset}|{shard_key(i, shards)}" for i in range(shards)]
