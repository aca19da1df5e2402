"""MLflow runs of a killed process do not stay RUNNING: the next session ends them as KILLED.

Real MLflow stores (SQLite, as the pipeline's, and the file store, which MLflow 3 opens only
with MLFLOW_ALLOW_FILE_STORE=true), real processes: a run whose owning pid is gone is ended with a tag
saying why; the runs of live processes (this one), of other hosts, and without an owner stay."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gen_ssd_dagster.tracking.mlflow_client import (ENDED_BY_TAG, HOST_TAG, PID_TAG, PROCESS_TAG,
                                                        MLflowSession, owner_tags, process_identity)

REPO = Path(__file__).resolve().parents[1]


def _session(tmp_path: Path) -> MLflowSession:
    file_store = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    uri = (tmp_path / "mlruns").as_uri() if file_store else f"sqlite:///{tmp_path / 'mlflow.db'}"
    return MLflowSession(uri, "gen-ssd", artifact_root=tmp_path / "artifacts",
                         lock_path=tmp_path / "mlflow.lock")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: no process has this pid now (until the system reuses it)
    return proc.pid


def _status(session: MLflowSession, run_id: str) -> str:
    return session.client.get_run(run_id).info.status


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_a_run_whose_process_is_gone_is_ended_as_killed(tmp_path, monkeypatch, store):
    if store == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    session = _session(tmp_path)
    host = socket.gethostname()
    create = lambda tags: session.client.create_run(session.experiment_id, tags=tags).info.run_id  # noqa: E731
    dead = create({HOST_TAG: host, PID_TAG: str(_dead_pid())})
    live = create(owner_tags())  # this process: alive
    foreign = create({HOST_TAG: host + "-elsewhere", PID_TAG: str(_dead_pid())})  # cannot be checked from here
    unowned = create({})  # made before owners were recorded
    with session.run("in progress") as run:  # a run of this process, open while another session starts
        again = _session(tmp_path)
        assert again.orphans_ended == [dead]
        assert _status(again, run.run_id) == "RUNNING"
    assert _status(session, run.run_id) == "FINISHED"
    assert _status(session, dead) == "KILLED"
    assert "was gone" in session.client.get_run(dead).data.tags[ENDED_BY_TAG]
    assert [_status(session, r) for r in (live, foreign, unowned)] == ["RUNNING"] * 3
    assert ENDED_BY_TAG not in session.client.get_run(live).data.tags
    assert _session(tmp_path).orphans_ended == []  # nothing more to end


@pytest.mark.skipif(process_identity(os.getpid()) is None, reason="no /proc to tell one process from another")
def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path):
    """The pid lives, but it is another process than the one that started the run (or another boot)."""
    session = _session(tmp_path)
    tags = {**owner_tags(), PROCESS_TAG: "another-boot:1"}
    run_id = session.client.create_run(session.experiment_id, tags=tags).info.run_id
    assert _session(tmp_path).orphans_ended == [run_id]
    assert _status(session, run_id) == "KILLED"


CHILD = """
import sys, time
from pathlib import Path
from gen_ssd_dagster.tracking.mlflow_client import MLflowSession
tmp = Path(sys.argv[1])
session = MLflowSession(f"sqlite:///{tmp / 'mlflow.db'}", "gen-ssd", artifact_root=tmp / "artifacts",
                        lock_path=tmp / "mlflow.lock")
with session.run("killed mid-run") as run:
    (tmp / "run_id").write_text(run.run_id)
    time.sleep(600)
"""


def test_a_sigkilled_run_is_killed_at_the_next_start(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env, start_new_session=True)
    marker = tmp_path / "run_id"
    deadline = time.monotonic() + 120
    while not marker.is_file():
        assert child.poll() is None, "the child exited before starting its run"
        assert time.monotonic() < deadline, "the child did not start its run in 120 s"
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    run_id = marker.read_text()
    session = _session(tmp_path)
    assert session.orphans_ended == [run_id]
    run = session.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[PID_TAG] == str(child.pid)
