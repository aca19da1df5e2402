"""A persistent Dagster instance inside the run's home directory (no Dagster daemon needed)."""

import os
from pathlib import Path

import dagster as dg

from .store import Home

HEADER = "# Written by gen-ssd"
INSTANCE_YAML = HEADER + """: the Dagster instance of this home directory (see the repository's dagster.yaml).
telemetry:
  enabled: false
storage:
  sqlite:
    base_dir: {base}
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {base}
# Runs killed mid-way are marked failed by the daemon's run monitoring (docs/reliability.md).
run_monitoring:
  enabled: true
  start_timeout_seconds: 600
  max_runtime_seconds: 172800
  poll_interval_seconds: 120
"""


def dagster_home(home: Home) -> Path:
    """<home>/dagster with a dagster.yaml (telemetry off, SQLite storage, run monitoring). Written
    when missing; one gen-ssd wrote earlier is brought up to date, one a user wrote is left alone."""
    root = home.make().dagster_home
    config = root / "dagster.yaml"
    wanted = INSTANCE_YAML.format(base=root)
    current = config.read_text() if config.is_file() else None
    if current is None or (current != wanted and current.startswith(HEADER)):
        scratch = config.with_name(f".dagster.yaml.{os.getpid()}")  # a concurrent reader never sees half a file
        scratch.write_text(wanted)
        os.replace(scratch, config)
    return root


def get_instance(home: Home) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(dagster_home(home)))
