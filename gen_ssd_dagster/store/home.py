"""The layout of one run's home directory (env var GEN_SSD_HOME, default ./.gen_ssd_home)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "GEN_SSD_HOME"
DEFAULT_HOME = ".gen_ssd_home"


def default_home() -> Path:
    """Where a run keeps its state: $GEN_SSD_HOME if set, else ./.gen_ssd_home relative to the
    current directory. An empty GEN_SSD_HOME counts as unset (never the current directory itself)."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> "Home":
        return cls(Path(root).expanduser().resolve() if root else default_home())

    def export(self) -> "Home":
        """Make this the home of everything this process starts from now on: $GEN_SSD_HOME is set to
        it, so code that reads the default (the definitions' datasets.yaml, child processes) agrees."""
        os.environ[HOME_ENV] = str(self.root)
        return self

    @property
    def db_path(self) -> Path:
        return self.root / "gen_ssd.duckdb"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def demo_models(self) -> Path:
        """Where the embedded demo teacher and student are built (`core.demo.models.build_demo_models`)."""
        return self.root / "models" / "demo"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def datasets_yaml(self) -> Path:
        return self.root / "datasets.yaml"

    def make(self) -> "Home":
        for p in (self.root, self.checkpoints, self.data, self.plots, self.dagster_home):
            p.mkdir(parents=True, exist_ok=True)
        return self
