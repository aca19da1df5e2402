"""Where a run's state lives: one home directory (`home.py`) holding DuckDB, MLflow, checkpoints
and data, and the DuckDB tables and queries over it (trajectories, scores, evaluation outputs,
experiments, the resumable work ledger, lineage).

May import `core` and DuckDB (and MLflow, only to read a model's lineage back); never Dagster or
another part of this package, so the CLI, notebooks and tests can query a home without them.
"""

from .db import Store
from .home import Home

__all__ = ["Home", "Store"]
