"""Where a run's state lives: one home directory (`home.py`) holding DuckDB, MLflow, checkpoints
and data, and the DuckDB tables and queries over it (trajectories, scores, evaluation outputs,
experiments, the work ledger, lineage). It reads and writes; running a method over the problems
and committing each batch is `generation.py`'s, above both.

May import the core's types only (problems, trajectories, results, errors, statistics, the method
versions of `core/method/versions.py`), never the algorithm (a method's runner or config, engines,
training), and DuckDB (and MLflow, only to read a model's lineage back); never Dagster or another
part of this package, so the CLI, notebooks and tests can query a home without them.
"""

from .db import Store
from .home import Home

__all__ = ["Home", "Store"]
