"""`fine_tune` in several processes: the launcher, and the entry point each process runs.

`fine_tune` with `TrainConfig.processes = N > 1` calls `train_in_processes`, which writes the job
(base model spec, examples, output, config) to a JSON file and starts (a list of examples goes into
the file; a streamed source, such as an exported dataset, is pickled beside it: its folders, not its rows)

    python -m torch.distributed.run --standalone --nproc-per-node N -m gen_ssd_dagster.core.training.launch JOB.json

Each process joins the group through `accelerate`, trains its share of every batch, and rank 0
saves. Rank 0's progress reaches the caller's `progress` (marked lines on stdout), every other
line the `gen_ssd_dagster.core.training.launch` logger; a failing rank fails the run with its own
error (the same class for the project's errors, `TrainingError` for others) naming the rank.

The entry point runs under `accelerate launch` or a hand-written torchrun line as well (several
machines: `torchrun --nnodes ...`), with `processes` in the job's config equal to the world size.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from gen_ssd_dagster.core import errors
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.training.examples import ExampleSource, InMemoryExamples, example_source
from gen_ssd_dagster.core.training.sft import TrainConfig, TrainResult, fine_tune
from gen_ssd_dagster.core.types import Progress

log = logging.getLogger(__name__)

PROGRESS = "@@gen-ssd-progress "  # rank 0's progress lines, told apart from the processes' logs
RESULT, ERROR, SOURCE = "result.json", "error-rank{}.json", "examples.pickle"


def write_job(path: Path, base: ModelSpec, examples: list[tuple[str, str]] | ExampleSource, out_dir: str | Path,
              config: TrainConfig, checkpoint_every_steps: int = 0, checkpoint_every_s: float = 600.0) -> None:
    """The job file the entry point reads: what `fine_tune` is called with."""
    source = example_source(examples)
    if isinstance(source, InMemoryExamples):
        listed = [list(e) for e in source.pairs]
    else:
        listed = None
        (path.parent / SOURCE).write_bytes(pickle.dumps(source))
    path.write_text(json.dumps({
        "base": dataclasses.asdict(base), "examples": listed, "out_dir": str(Path(out_dir).resolve()),
        "config": dataclasses.asdict(config), "checkpoint_every_steps": checkpoint_every_steps,
        "checkpoint_every_s": checkpoint_every_s}))


def train_in_processes(base: ModelSpec, examples: list[tuple[str, str]] | ExampleSource, out_dir: str | Path, config: TrainConfig,
                       progress: Progress | None = None, checkpoint_every_steps: int = 0,
                       checkpoint_every_s: float = 600.0) -> TrainResult:
    """Run `fine_tune` as `config.processes` processes on this machine and return rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="gen-ssd-train-") as tmp:
        job_dir = Path(tmp)
        write_job(job_dir / "job.json", base, examples, out_dir, config, checkpoint_every_steps, checkpoint_every_s)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={config.processes}",
               "-m", __name__, str(job_dir / "job.json")]
        # The processes import this very package (a worktree, say), whatever the installed one is.
        root = str(Path(__file__).resolve().parents[3])
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        log.info("training in %d processes: %s", config.processes, " ".join(cmd))
        tail: collections.deque[str] = collections.deque(maxlen=40)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith(PROGRESS):
                    if progress:
                        progress(json.loads(line[len(PROGRESS):]))
                elif line.strip():
                    tail.append(line)
                    log.info("%s", line)
            rc = proc.wait()
        except BaseException:  # the caller gave up (or its progress callback failed): stop the ranks too
            proc.kill()  # torchrun; its processes die with it (PR_SET_PDEATHSIG in `main`)
            proc.wait()
            raise
        if rc != 0:
            raise _failure(job_dir, rc, tail)
        saved = json.loads((job_dir / RESULT).read_text())
    saved["path"], saved["spec"] = Path(saved["path"]), ModelSpec(**saved["spec"])
    return TrainResult(**saved)


def _failure(job_dir: Path, rc: int, tail) -> Exception:
    """The error of the rank that failed first (a project error in preference: bad input, not the
    broken connections it left the other ranks with)."""
    reports = [json.loads(p.read_text()) for p in job_dir.glob(ERROR.format("*"))]
    reports.sort(key=lambda r: (not r["project_error"], r["time"]))
    if not reports:  # killed without a word (out of memory, a signal)
        return errors.TrainingError(f"training processes failed (torchrun exit code {rc}); last output:\n"
                                    + "\n".join(tail))
    first = reports[0]
    cls = getattr(errors, first["type"], None) if first["project_error"] else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(f"training rank {first['rank']}: {first['message']}")
    return errors.TrainingError(f"training rank {first['rank']} failed: {first['type']}: {first['message']}\n"
                                f"{first['traceback']}")


def _die_with_parent() -> None:
    """Linux: this process is killed when torchrun is (torchrun starts it in a session of its own,
    so a kill of the caller's process group would miss it and leave it training)."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    _die_with_parent()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: torchrun --nproc-per-node N -m gen_ssd_dagster.core.training.launch JOB.json")
    job_file = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    job = json.loads(job_file.read_text())

    def report(info: dict) -> None:
        print(PROGRESS + json.dumps(info), flush=True)

    if job["examples"] is None:  # the job's own file, written by `write_job`
        examples = pickle.loads((job_file.parent / SOURCE).read_bytes())
    else:
        examples = [tuple(e) for e in job["examples"]]
    try:
        result = fine_tune(ModelSpec(**job["base"]), examples, job["out_dir"],
                           TrainConfig(**job["config"]), report if rank == 0 else None,
                           job["checkpoint_every_steps"], job["checkpoint_every_s"])
    except Exception as exc:
        (job_file.parent / ERROR.format(rank)).write_text(json.dumps({
            "rank": rank, "type": type(exc).__name__, "message": str(exc), "time": time.time(),
            "project_error": isinstance(exc, (errors.GenSSDError, errors.TrainingError)),
            "traceback": "".join(traceback.format_exception(exc)[-6:])}))
        raise
    if rank == 0:
        saved = {**dataclasses.asdict(result), "path": str(result.path), "spec": dataclasses.asdict(result.spec)}
        tmp = job_file.parent / f"{RESULT}.tmp"
        tmp.write_text(json.dumps(saved))
        os.replace(tmp, job_file.parent / RESULT)


if __name__ == "__main__":
    main()
