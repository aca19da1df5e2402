"""The dataset partitions: one per dataset a run may name (`run_config/datasets.py`), read when the
definitions load."""

import dagster as dg

from ..run_config.datasets import dataset_specs

DATASETS = dg.StaticPartitionsDefinition(list(dataset_specs()))
