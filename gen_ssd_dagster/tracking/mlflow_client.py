"""A small MLflow client: runs that always end, artifacts, registered model versions.

Uses `MlflowClient` rather than the fluent API, so no global "active run" leaks between assets.
A run ends FINISHED or FAILED from inside its process; a process killed outright (SIGKILL, OOM,
power loss) cannot end its run, so every run records its owner (host, pid, and on Linux the boot
and start time of that process) and opening a session ends, as KILLED, the RUNNING runs whose
owner on this host is gone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException


HOST_TAG, PID_TAG, PROCESS_TAG = "gen_ssd.host", "gen_ssd.pid", "gen_ssd.process"
ENDED_BY_TAG = "gen_ssd.ended_by"
DATASET_DIGEST_TAG = "gen_ssd.dataset_digest"  # an input dataset's whole digest (MLflow keeps 36 characters)


def process_identity(pid: int) -> str | None:
    """The boot id and start time of a process (Linux /proc), so that a pid reused after the owner
    died (or after a reboot) is not taken for the owner; None where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22 of stat: start time after boot


def owner_tags() -> dict[str, str]:
    """The tags that name the process owning a run: this one."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    identity = process_identity(os.getpid())
    return {**tags, PROCESS_TAG: identity} if identity else tags


def owner_alive(pid: int, identity: str | None = None) -> bool:
    """Whether the process `pid` of this host still runs (and is the same process, where its
    identity was recorded). A process of another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    current = process_identity(pid) if identity else None
    return current is None or current == identity


def end_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of the experiment whose owning process on this host is gone,
    with a tag saying why; returns their ids. Runs of other hosts, or without an owner, are left alone."""
    host, ended, token = socket.gethostname(), [], None
    while True:
        page = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=500,
                                  page_token=token)
        for run in page:
            tags = run.data.tags
            pid = tags.get(PID_TAG, "")
            if tags.get(HOST_TAG) != host or not pid.isdigit() or int(pid) <= 0:
                continue
            if owner_alive(int(pid), tags.get(PROCESS_TAG)):
                continue
            client.set_tag(run.info.run_id, ENDED_BY_TAG,
                           f"process {pid} on {host} was gone when a later session opened (killed, out of memory "
                           f"or a power loss): ended as KILLED by pid {os.getpid()}")
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
        token = page.token
        if not token:
            return ended


class MLflowRun:
    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str):
        self.client, self.run_id, self.artifact_uri = client, run_id, artifact_uri

    def log(self, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None) -> None:
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
        )

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> str:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        return f"{self.artifact_uri}/{artifact_path}"

    def log_file(self, local_path: str | Path, artifact_path: str) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dataset(self, path: str | Path, digest: str, name: str, config: str = "default") -> None:
        """Record the Hugging Face dataset folder `path` (export/) as this run's training input. MLflow
        keeps 36 characters of a digest: the first 32 of ours go there, the whole one in an input tag."""
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        source = HuggingFaceDatasetSource(path=str(path), config_name=config, split="train")
        dataset = MetaDataset(source, name=name, digest=digest[:32])._to_mlflow_entity()
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, "training"), InputTag(DATASET_DIGEST_TAG, digest)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)])

    def register(self, name: str, artifact_path: str, tags: dict | None = None) -> str:
        """A new version of registered model `name` from this run's artifacts; returns the version."""
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        mv = self.client.create_model_version(
            name, source=f"{self.artifact_uri}/{artifact_path}", run_id=self.run_id,
            tags={k: str(v) for k, v in (tags or {}).items()})
        return str(mv.version)


class MLflowSession:
    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path, lock_path: Path):
        self.tracking_uri = tracking_uri
        # Creating the SQLite schema and the experiment is not safe from two processes at once.
        with FileLock(str(lock_path), timeout=300):
            self.client = MlflowClient(tracking_uri)
            exp = self.client.get_experiment_by_name(experiment_name)
            if exp is None:
                location = (artifact_root / experiment_name).resolve().as_uri()
                self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=location)
            else:
                self.experiment_id = exp.experiment_id
            # The runs of processes killed since (SIGKILL, OOM) would otherwise stay RUNNING forever.
            self.orphans_ended = end_orphaned_runs(self.client, self.experiment_id)

    @contextmanager
    def run(self, name: str, tags: dict | None = None) -> Iterator[MLflowRun]:
        """A run that ends FINISHED when the block completes and FAILED when it raises (KILLED by a
        later session if the process dies without either)."""
        info = self.client.create_run(self.experiment_id, run_name=name,
                                      tags={**owner_tags(), **{k: str(v) for k, v in (tags or {}).items()}}).info
        status = "FAILED"
        try:
            yield MLflowRun(self.client, info.run_id, info.artifact_uri)
            status = "FINISHED"
        finally:
            self.client.set_terminated(info.run_id, status)

    def latest_version(self, name: str, tag_key: str, tag_value: str):
        """The newest registered version of `name` carrying tag_key=tag_value, or None."""
        try:
            versions = self.client.search_model_versions(f"name = '{name}' and tag.{tag_key} = '{tag_value}'")
        except MlflowException:
            return None
        return max(versions, key=lambda v: int(v.version), default=None)
