"""The Dagster instances gen-ssd uses have run monitoring on (a killed run must not stay STARTED)."""

import shutil
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def _assert_monitored(instance: dg.DagsterInstance):
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_runtime_seconds == 172800
    assert instance.run_monitoring_start_timeout_seconds == 600


def test_home_instance_monitors_runs_and_updates_an_older_file(tmp_path):
    from gen_ssd_dagster.instance import HEADER, dagster_home, get_instance
    from gen_ssd_dagster.store import Home

    home = Home.resolve(tmp_path / "home")
    _assert_monitored(get_instance(home))
    config = dagster_home(home) / "dagster.yaml"
    old = config.read_text().split("# Runs killed")[0]  # what earlier versions wrote: no monitoring
    config.write_text(old)
    assert not dg.DagsterInstance.from_config(str(config.parent)).run_monitoring_enabled
    _assert_monitored(get_instance(home))
    mine = f"# my own instance\ntelemetry:\n  enabled: false\nstorage:\n  sqlite:\n    base_dir: {config.parent}\n"
    config.write_text(mine)
    get_instance(home)
    assert config.read_text() == mine and not mine.startswith(HEADER)


def test_repository_instance_monitors_runs(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.chdir(tmp_path)  # its storage paths are relative to the working directory
    _assert_monitored(dg.DagsterInstance.from_config(str(tmp_path)))
