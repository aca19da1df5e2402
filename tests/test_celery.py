"""Scale-out for real: the `gen_ssd_dagster.scale_out` code location with GEN_SSD_EXECUTOR=celery.

A real Redis (Debian's `redis-server`, on a free port of 127.0.0.1) is the Celery broker and result
backend; a real `dagster-celery worker` process takes the steps; the run is started as a user would,
with `dagster asset materialize` on that code location. What must hold: every step of the run
executed inside the worker process (its node name in the engine events, its pid on the step
events, not the pid of the process that ran the job) and the trajectories it generated are in
DuckDB under that run. Tiny random models (conftest), 2 problems per method.

Skipped, with the reason printed, only when redis-server or dagster-celery is not installed
(`.ci/run` and `make venv` install them); with CI=true their absence is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import data_dir

REDIS = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
try:
    import dagster_celery  # noqa: F401
    import redis

    MISSING = None if REDIS else "redis-server is not installed (apt-get install -y redis-server)"
except ImportError as exc:
    MISSING = f"{exc.name} is not installed (pip install '.[celery]')"
if MISSING:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but {MISSING}")
    print(f"tests/test_celery.py skipped: {MISSING}")
    pytest.skip(MISSING, allow_module_level=True)

BIN = Path(sys.executable).parent
WORKER = "gen-ssd-test-worker"
STEPS = {"teacher", "base_student", "problems", "cold_start_student", "gen_ssd_trajectories",
         "standard_kd_trajectories"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children, by its process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def redis_url(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.time() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                _stop(proc)
                raise RuntimeError(f"redis-server on port {port} did not answer (exit code {proc.poll()})")
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}"
    _stop(proc)


def _env(home: Path, redis_url: str) -> dict:
    from gen_ssd_dagster.instance import get_instance
    from gen_ssd_dagster.store import Home

    # Create the SQLite instance storage once, before two processes open it at the same moment
    # (both would stamp its schema version). A deployment uses Postgres (deploy/dagster.yaml).
    with get_instance(Home.resolve(home)) as instance:
        dagster_home = instance.root_directory
    return {**os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the worker runs `celery`
            "DAGSTER_HOME": dagster_home,
            "GEN_SSD_HOME": str(home),
            "GEN_SSD_EXECUTOR": "celery",
            "GEN_SSD_CELERY_BROKER": f"{redis_url}/0",
            "GEN_SSD_CELERY_BACKEND": f"{redis_url}/1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # starts Redis, a Celery worker and a Dagster run over real (tiny) models
def test_celery_worker_runs_the_partition_steps(tmp_path, tiny_models, redis_url):
    from dagster import DagsterEventType, DagsterInstance

    from gen_ssd_dagster.store import Home, Store

    teacher, student = tiny_models
    home = tmp_path / "home"
    env = _env(home, redis_url)
    pidfile = tmp_path / "worker.pid"
    worker_log = open(tmp_path / "worker.log", "w")
    repo = Path(__file__).resolve().parents[1]
    worker = subprocess.Popen(
        [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
         "-y", str(repo / "deploy" / "celery.yaml"), "-n", WORKER, "--loglevel", "WARNING",
         "--", "--pool=solo", f"--pidfile={pidfile}"],
        env=env, cwd=tmp_path, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        small = {"max_problems": 2, "offset": 0, "batch_size": 2, "num_candidates": 2, "sampling": {"max_new_tokens": 16}}
        run_config = {
            "ops": {
                "problems": {"config": {"max_problems": 4}},
                "cold_start_student": {"config": {"max_problems": 0}},  # skipped: the models are random
                "gen_ssd_trajectories": {"config": {**small, "chunk_tokens": 8, "suitability": "none"}},
                "standard_kd_trajectories": {"config": small},
            },
            "resources": {
                "models": {"config": {"teacher": str(teacher), "student": str(student)}},
                "data": {"config": {"demo_train": 8, "demo_test": 4, "data_dir": str(data_dir())}},
            },
        }
        started = time.time()
        run = subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "gen_ssd_dagster.scale_out",
             "--select", ",".join(sorted(STEPS)), "--partition", "demo", "--config-json", json.dumps(run_config)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
        elapsed = time.time() - started
        worker_alive = worker.poll() is None
        # Read while the worker lives: Celery deletes its pidfile when it shuts down cleanly.
        worker_pid = int(pidfile.read_text().strip()) if pidfile.exists() else None
    finally:
        _stop(worker)
        worker_log.close()
    log_tail = (tmp_path / "worker.log").read_text()[-3000:]
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nworker log:\n{log_tail}"
    assert worker_alive, f"the worker died during the run:\n{log_tail}"
    assert worker_pid is not None, f"the worker wrote no pidfile:\n{log_tail}"

    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    [dagster_run] = instance.get_runs()
    assert dagster_run.tags["dagster/partition"] == "demo"
    events = [e.dagster_event for e in instance.all_logs(dagster_run.run_id) if e.dagster_event]
    succeeded = {e.step_key: e.pid for e in events if e.event_type == DagsterEventType.STEP_SUCCESS}
    assert set(succeeded) == STEPS, succeeded
    # every step ran in the Celery worker's process, none in the process that ran the job
    assert set(succeeded.values()) == {worker_pid}, (succeeded, worker_pid)
    [run_pid] = {e.pid for e in events if e.event_type == DagsterEventType.RUN_START}
    assert run_pid != worker_pid
    delegated = {e.step_key: e.engine_event_data.metadata["Celery worker"].value for e in events
                 if e.event_type == DagsterEventType.ENGINE_EVENT and "in celery worker" in (e.message or "")}
    assert set(delegated) == STEPS and all(v.startswith(f"{WORKER}@") for v in delegated.values()), delegated

    store = Store(Home.resolve(home).db_path)
    rows = dict(store.query("SELECT method, count(*) FROM trajectories WHERE dataset = 'demo' AND dagster_run_id = ?"
                            " GROUP BY method", [dagster_run.run_id]))
    assert rows == {"gen_ssd": 2, "standard_kd": 4}, rows  # 2 problems; K=2 full samples for standard KD
    print(f"celery run of {len(STEPS)} steps: {elapsed:.0f}s (worker pid {worker_pid}, node {delegated['teacher']})")
