"""Helpers of the Dagster layer that define no Dagster objects: run config, MLflow client,
training-run cache, materialization metadata, the dataset partitions.

They live beside `defs/`, not in it: `dg.load_from_defs_folder` loads every module under `defs/`
as definitions, and the dg convention keeps that folder to what defines assets, checks,
schedules, sensors and resources.
"""
