"""`gen-ssd view`: a local page over one home's trajectories, read from its DuckDB read-only.

A list (filters, sort, pages), one trajectory step by step with every candidate's PPL, the same
problem under the other methods, and the distributions of a selection. `export_partition` writes
the same as one HTML file.

May import `core`, `store` and its web and plotting libraries; never Dagster or `defs` (whose
trajectory assets call `export_partition`).
"""

from .app import create_app, serve
from .export import export_partition
from .queries import Filters, Reader, ViewerError

__all__ = ["Filters", "Reader", "ViewerError", "create_app", "export_partition", "serve"]
