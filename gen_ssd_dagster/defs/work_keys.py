"""The work key of each trajectories partition as the asset's value, handed to the distilled students.

A trajectories asset outputs its partition's `WorkKey` (what its rows in DuckDB are stored under).
The value needs no file of its own: the materialization's metadata already names every field of the
key (dataset, method, method version, teacher and student versions, config hash), so the IO
manager reads the key back from the partition's latest materialization. It travels with the event
log to any machine that runs a step, and materializations made before keys were outputs load too.
"""

from __future__ import annotations

import dataclasses

import dagster as dg

from ..store.trajectories import WorkKey

FIELDS = [f.name for f in dataclasses.fields(WorkKey)]


class WorkKeyIOManager(dg.ConfigurableIOManager):
    """Stores a trajectories partition's `WorkKey` in its materialization metadata; loads, for an
    unpartitioned reader, {partition: key} of every materialized partition."""

    def handle_output(self, context: dg.OutputContext, obj: WorkKey) -> None:
        if not isinstance(obj, WorkKey):
            raise TypeError(f"{context.asset_key.to_user_string()} outputs a WorkKey, got {type(obj).__name__}")
        # budget_problems: only where a budget chose them, as a JSON list
        context.add_output_metadata({f: list(v) if isinstance(v, tuple) else v
                                     for f in FIELDS if (v := getattr(obj, f)) is not None})

    def load_input(self, context: dg.InputContext) -> dict[str, WorkKey]:
        keys = {}
        for partition in context.asset_partition_keys:
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition]), limit=1).records
            if records:
                meta = records[0].asset_materialization.metadata
                keys[partition] = WorkKey(**{f: meta[f].value for f in FIELDS if f in meta})
        return keys
