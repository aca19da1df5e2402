"""Where a run's state lives: one home directory holding DuckDB, MLflow, checkpoints and data.

No Dagster import here: the store is plain DuckDB so the CLI, notebooks and tests can query it.
"""

from .db import Store
from .home import Home

__all__ = ["Home", "Store"]
