"""The selected trajectories as a Hugging Face dataset: Parquet, a card, a digest (docs/dataset-export.md).

Reads a home's DuckDB through SQL on its tables (no Dagster); the `training_dataset` assets
(defs/training_dataset.py) and `gen-ssd export` call `export_dataset`.
"""

from .writer import ExportResult, ExportSettings, dataset_dir, export_dataset, read_manifest, work_id

__all__ = ["ExportResult", "ExportSettings", "dataset_dir", "export_dataset", "read_manifest", "work_id"]
