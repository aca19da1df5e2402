"""A real SIGKILL in the middle of the long steps, then a restart: nothing lost, nothing doubled.

Each test starts the work in a child process (`python -c`, its own process group), polls the
store until some of it is committed, kills the group with SIGKILL, runs the same work again and
compares with an uninterrupted run of the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import data_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def start_child(code: str, *args) -> subprocess.Popen:
    """`python -c code args...` in a new process group, so the kill reaches any child it starts."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_child(code: str, *args, timeout: float = 300) -> str:
    proc = start_child(code, *args)
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.fixture
def one_thread():
    """Torch on one thread in this process too, as in the children: the same samples bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILL the child's process group as soon as `ready()` holds (polled); fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace")
            pytest.fail(f"the child ended (rc {proc.returncode}) before it could be killed mid-run:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("nothing was committed in time")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


# ---------------------------------------------------------------- trajectories (the Dagster asset)

N_PROBLEMS = 10
RUN_CONFIG = {"ops": {
    "problems": {"config": {"max_problems": N_PROBLEMS}},
    "cold_start_student": {"config": {"max_problems": 0}},  # skipped: the tiny models are random
    "gen_ssd_trajectories": {"config": {"max_problems": N_PROBLEMS, "offset": 0, "batch_size": 2,
                                        "sampling": {"max_new_tokens": 48}, "num_candidates": 2, "chunk_tokens": 8,
                                        "suitability": "none"}},
}}
UPSTREAM = ["teacher", "base_student", "problems", "cold_start_student"]

PIPELINE = """
import json, sys
from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
from gen_ssd_dagster.pipeline import run_pipeline
from gen_ssd_dagster.store import Home
home, teacher, student, run_config, selection = sys.argv[1:6]
partition = sys.argv[6] if len(sys.argv) > 6 else "demo"
result = run_pipeline(Home.resolve(home), partition, json.loads(run_config),
                      {"models": ModelsResource(teacher=teacher, student=student),
                       "data": DataResource(demo_train=12, demo_test=4)},
                      log=print, selection=json.loads(selection))
sys.exit(0 if result.success else 1)
"""


def _pipeline_args(home, tiny_models, selection):
    return (home, *tiny_models, json.dumps({"ops": {k: v for k, v in RUN_CONFIG["ops"].items() if k in selection}}),
            json.dumps(selection))


def _store(home):
    from gen_ssd_dagster.store import Home, Store

    return Store(Home.resolve(home).db_path)


def _materialize(home, tiny_models, selection):
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    teacher, student = tiny_models
    result = run_pipeline(Home.resolve(home), "demo", RUN_CONFIG,
                          {"models": ModelsResource(teacher=str(teacher), student=str(student)),
                           "data": DataResource(demo_train=12, demo_test=4, data_dir=str(data_dir()))},
                          log=lambda _: None, selection=selection)
    assert result.success
    return result


TRAJ_SQL = ("SELECT problem_id, sample_index, end_reason, text, dagster_run_id FROM trajectories"
            " WHERE method = 'gen_ssd' ORDER BY problem_id, sample_index")


@pytest.mark.slow
def test_sigkill_mid_trajectories_resumes_without_loss_or_duplicates(tmp_path, tiny_models, one_thread):
    killed_home, clean_home = tmp_path / "killed", tmp_path / "clean"
    for home in (killed_home, clean_home):
        _materialize(home, tiny_models, UPSTREAM)
    store = _store(killed_home)

    def committed() -> int:
        return store.query("SELECT count(*) FROM problem_runs WHERE method = 'gen_ssd'")[0][0]

    proc = start_child(PIPELINE, *_pipeline_args(killed_home, tiny_models, ["gen_ssd_trajectories"]))
    kill_when(proc, lambda: committed() >= 2)
    at_kill = store.query(TRAJ_SQL)
    n_done = committed()
    assert 2 <= n_done < N_PROBLEMS, n_done  # killed mid-partition, with whole batches committed
    assert len({r[0] for r in at_kill}) == n_done  # a batch's trajectories land with its problem_runs rows

    result = _materialize(killed_home, tiny_models, ["gen_ssd_trajectories"])  # the restart
    md = next(e for e in result.get_asset_materialization_events()).step_materialization_data.materialization.metadata
    assert (md["reused_problems"].value, md["new_problems"].value) == (n_done, N_PROBLEMS - n_done)
    _materialize(clean_home, tiny_models, ["gen_ssd_trajectories"])  # the uninterrupted reference

    resumed, clean = store.query(TRAJ_SQL), _store(clean_home).query(TRAJ_SQL)
    # finished problems were not generated again: their rows still carry the killed run's id
    assert [r for r in resumed if r[0] in {k[0] for k in at_kill}] == at_kill
    # nothing lost, nothing doubled: the same problems, samples and texts as an uninterrupted run
    assert len(resumed) == len(clean) and len({(r[0], r[1]) for r in resumed}) == len(resumed)
    assert [r[:4] for r in resumed] == [r[:4] for r in clean]
    assert len({r[0] for r in resumed}) == N_PROBLEMS
    assert store.query("SELECT count(*) FROM problem_runs WHERE method = 'gen_ssd'")[0][0] == N_PROBLEMS
    new = store.query("SELECT count(DISTINCT problem_id) FROM trajectories WHERE method = 'gen_ssd'"
                      " AND dagster_run_id <> ?", [at_kill[0][4]])[0][0]
    assert new == N_PROBLEMS - n_done  # the restart generated exactly the missing problems
    # candidates: one set per trajectory step, none orphaned by the kill
    assert store.query("SELECT count(*) FROM candidates c ANTI JOIN trajectories t USING (trajectory_key)")[0][0] == 0


# ---------------------------------------------------------------- fine-tuning

TRAIN = """
import sys, time, torch
torch.set_num_threads(1)
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
sys.path.insert(0, sys.argv[4])
from test_crash_resume import TRAIN_EXAMPLES, _train_config
base, out, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])
fine_tune(base, TRAIN_EXAMPLES, out, _train_config(), progress=lambda info: time.sleep(slow), checkpoint_every_steps=5)
"""
TRAIN_EXAMPLES = [(f"Question: what is {i} + {i % 7}?\nAnswer:\n", f"{i} + {i % 7} = {i + i % 7}\n#### {i + i % 7}")
                  for i in range(40)]


def _train_config():
    from gen_ssd_dagster.core.training.sft import TrainConfig

    return TrainConfig(epochs=6, learning_rate=3e-3, batch_size=4, warmup_steps=5, log_every=1)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def saved_training_step(scratch: Path) -> int:
    """The step of the training state in `scratch`; 0 while there is none (or it is being replaced)."""
    import torch

    from gen_ssd_dagster.core.training.sft import STATE_FILE

    try:
        return int(torch.load(scratch / STATE_FILE, weights_only=True)["step"])
    except Exception:
        return 0


@pytest.mark.slow
def test_sigkill_mid_fine_tune_resumes_from_last_checkpoint(tmp_path, tiny_models, one_thread):
    import torch

    from gen_ssd_dagster.core.training.sft import fine_tune, resume_dir

    base = tiny_models[1]
    out, clean = tmp_path / "killed" / "student", tmp_path / "clean" / "student"
    scratch = resume_dir(out)

    def saved_step() -> int:
        return saved_training_step(scratch)

    proc = start_child(TRAIN, base, out, 0.05, Path(__file__).parent)
    kill_when(proc, lambda: saved_step() >= 10)
    assert not out.exists()  # no finished checkpoint where one is expected
    step_at_kill = saved_step()

    resumed = fine_tune(base, TRAIN_EXAMPLES, out, _train_config(), checkpoint_every_steps=5)
    assert resumed.resumed_from_step == step_at_kill and resumed.steps == 60  # 40 examples / 4 x 6 epochs
    assert not scratch.exists()  # removed once the finished save is in place
    assert sorted(p.name for p in out.parent.iterdir()) == ["student"]

    reference = fine_tune(base, TRAIN_EXAMPLES, clean, _train_config())
    assert reference.resumed_from_step == 0
    a, b = _weights(out), _weights(clean)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run must end where an uninterrupted one does"
    assert resumed.final_loss == reference.final_loss


def test_corrupt_or_foreign_training_state_is_discarded(tmp_path, tiny_models):
    import torch

    from gen_ssd_dagster.core.training import sft as training
    from gen_ssd_dagster.core.engines.models import ModelSpec

    examples = [("Question: 1 + 1?\nAnswer:\n", "1 + 1 = 2\n#### 2")] * 8
    config = training.TrainConfig(epochs=1, batch_size=4, warmup_steps=0)
    out = tmp_path / "student"
    scratch = training.resume_dir(out)
    scratch.mkdir()
    (scratch / training.STATE_FILE).write_bytes(b"PK\x03\x04 a truncated torch zip")
    result = training.fine_tune(tiny_models[1], examples, out, config)
    assert result.resumed_from_step == 0 and result.steps == 2 and not scratch.exists()

    # the state of another run (other examples, same base and config) is not resumed either
    scratch.mkdir()
    other = training._fingerprint(ModelSpec(str(tiny_models[1])), examples * 2, config)
    torch.save({"fingerprint": other, "step": 1}, scratch / training.STATE_FILE)
    result = training.fine_tune(tiny_models[1], examples, out, config)
    assert result.resumed_from_step == 0 and not scratch.exists()


# ---------------------------------------------------------------- evaluation

EVAL = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[4])
from test_crash_resume import EVAL_PROBLEMS
from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings, evaluate
from gen_ssd_dagster.store import Store
from gen_ssd_dagster.store.eval_outputs import EvalLedger
model, db, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])
evaluate(model, EVAL_PROBLEMS, batch_size=2, settings=EvalSettings(max_new_tokens=24), progress=lambda _: time.sleep(slow),
         ledger=EvalLedger(Store(db), "v1", "demo", "g1", "e1"))
"""


def _eval_problems():
    from gen_ssd_dagster.core.types import Problem

    return [Problem("demo", f"demo-{i}", f"Mia has {i} apples and buys {i % 5}. How many?", str(i + i % 5))
            for i in range(12)]


EVAL_PROBLEMS = _eval_problems()


@pytest.mark.slow
def test_sigkill_mid_evaluation_redoes_only_missing_batches(tmp_path, tiny_models, one_thread):
    from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings, evaluate
    from gen_ssd_dagster.store import Store
    from gen_ssd_dagster.store.eval_outputs import EvalLedger

    teacher = tiny_models[0]
    db = tmp_path / "killed.duckdb"
    Store(db).init()

    def recorded() -> int:
        return Store(db).query("SELECT count(*) FROM evaluation_outputs")[0][0]

    proc = start_child(EVAL, teacher, db, 0.5, Path(__file__).parent)
    kill_when(proc, lambda: recorded() >= 4)
    at_kill = recorded()
    assert at_kill % 2 == 0 and 4 <= at_kill < 12  # whole batches only
    before = Store(db).query("SELECT problem_id, completion, created_at FROM evaluation_outputs ORDER BY 1")

    resumed = evaluate(teacher, EVAL_PROBLEMS, batch_size=2, settings=EvalSettings(max_new_tokens=24),
                       ledger=EvalLedger(Store(db), "v1", "demo", "g1", "e1"))
    assert (resumed.n, resumed.reused) == (12, at_kill)  # the finished batches were not generated again
    after = Store(db).query("SELECT problem_id, completion, created_at FROM evaluation_outputs ORDER BY 1")
    assert len(after) == 12 and [r for r in after if r[0] in {b[0] for b in before}] == before

    clean = evaluate(teacher, EVAL_PROBLEMS, batch_size=2, settings=EvalSettings(max_new_tokens=24))
    assert resumed.outputs == clean.outputs

    # a changed question is redone, not served from the ledger
    changed = [*EVAL_PROBLEMS[:-1], dataclasses.replace(EVAL_PROBLEMS[-1], question="Tom has 3 pears.")]
    again = evaluate(teacher, changed, batch_size=2, settings=EvalSettings(max_new_tokens=24),
                     ledger=EvalLedger(Store(db), "v1", "demo", "g1", "e1"))
    assert again.reused == 10
