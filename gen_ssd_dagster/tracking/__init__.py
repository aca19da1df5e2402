"""Experiment tracking: the MLflow client (`mlflow_client.py`: runs that always end, artifacts,
registered model versions) and the training-run cache that fine-tunes a student once per set of
inputs and logs it there (`training_runs.py`).

May import `core`, MLflow and Dagster's public API (a run's log and metadata values); never `defs`:
the resources hand it what it needs (the checkpoint directory, an MLflow session). Defines no
Dagster definitions.
"""
