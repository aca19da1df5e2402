"""A persistent Dagster instance inside the run's home directory (no Dagster daemon needed)."""

from pathlib import Path

import dagster as dg

from .store import Home

INSTANCE_YAML = """\
# Written by gen-ssd: the Dagster instance of this home directory (see the repository's dagster.yaml).
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
"""


def dagster_home(home: Home) -> Path:
    """<home>/dagster with a dagster.yaml (telemetry off, SQLite storage); created if missing."""
    root = home.make().dagster_home
    config = root / "dagster.yaml"
    if not config.is_file():
        config.write_text(INSTANCE_YAML.format(base=root))
    return root


def get_instance(home: Home) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(dagster_home(home)))
