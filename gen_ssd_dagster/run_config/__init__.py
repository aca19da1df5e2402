"""Run configuration of the Dagster layer: each asset's run config (`asset_configs.py`) as Dagster
`Config` classes derived from the core's config dataclasses (`derive.py`), and the datasets a run
may name (`datasets.py`: the built-ins plus a datasets YAML).

May import `core`, `store` (for the home's datasets YAML) and Dagster's `Config`; never `defs`,
`tracking` or an entry point. Defines no Dagster definitions: the dataset partitions built from
`datasets.py` are `defs/partitions.py`.
"""
