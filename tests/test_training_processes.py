"""Training in several processes (DDP over gloo on this CPU) against one process, gradient
accumulation and checkpointing against plain steps, and a SIGKILLed two-process run resumed.

Tolerance: the same global batch in other micro batches sums the same fp32 numbers in another
order (and pads each micro batch to its own longest row), so losses differ at ~1e-6 (measured:
5e-7 over 10 steps); we allow 1e-5 on losses and 1e-4 on weights after AdamW.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from gen_ssd_dagster.core.errors import ConfigError, ModelLoadError
from gen_ssd_dagster.core.training.parallel import micro_batches
from gen_ssd_dagster.core.training.sft import STATE_FILE, TrainConfig, fine_tune, resume_dir
from test_crash_resume import _weights, kill_when, saved_training_step, start_child

# 33 examples in batches of 8: the last batch has one example, so some ranks get empty shares.
EXAMPLES = [(f"Question: what is {i} + {i % 7}?\nAnswer:\n", f"{i} + {i % 7} = {i + i % 7}\n#### {i + i % 7}")
            for i in range(33)]
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-4


def _run(base, out: Path, **settings):
    reports = []
    config = TrainConfig(epochs=1, batch_size=8, learning_rate=3e-3, warmup_steps=1, log_every=1, **settings)
    result = fine_tune(base, EXAMPLES, out, config, progress=reports.append)
    return result, [r["loss"] for r in reports]


def _assert_same_run(a, b, curve_a, curve_b, tol=LOSS_TOL):
    assert a.steps == b.steps == len(curve_a) == len(curve_b) and a.train_tokens == b.train_tokens
    assert max(abs(x - y) for x, y in zip(curve_a, curve_b)) < tol, (curve_a, curve_b)
    wa, wb = _weights(a.path), _weights(b.path)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < WEIGHT_TOL


def test_micro_batches_split_evenly():
    assert micro_batches(list(range(8)), 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert micro_batches(list(range(6)), 4) == [[0, 1], [2, 3], [4], [5]]
    assert micro_batches([0], 4) == [[0], [], [], []]


@pytest.mark.parametrize("settings, names", [
    (dict(batch_size=8, processes=3), ("batch_size", "processes", "gradient_accumulation")),
    (dict(batch_size=8, processes=2, gradient_accumulation=3), ("batch_size", "processes", "gradient_accumulation")),
    (dict(processes=0), ("processes",)), (dict(gradient_accumulation=0), ("gradient_accumulation",)),
    (dict(fsdp=True), ("fsdp", "processes")),
])
def test_bad_layout_names_the_settings(tiny_models, tmp_path, settings, names):
    with pytest.raises(ConfigError) as err:
        fine_tune(tiny_models[1], EXAMPLES, tmp_path / "out", TrainConfig(**settings))
    assert all(name in str(err.value) for name in names), err.value
    assert not (tmp_path / "out").exists()


def test_processes_must_match_the_launchers_world(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun --nproc-per-node 4 would set it
    with pytest.raises(ConfigError, match="processes is 2 but this run has 4 processes"):
        fine_tune(tiny_models[1], EXAMPLES, tmp_path / "out", TrainConfig(batch_size=8, processes=2))


def test_accumulation_and_checkpointing_keep_the_loss_curve(tiny_models, tmp_path):
    plain, curve = _run(tiny_models[1], tmp_path / "plain")
    acc, acc_curve = _run(tiny_models[1], tmp_path / "acc", gradient_accumulation=4, gradient_checkpointing=True)
    _assert_same_run(plain, acc, curve, acc_curve)
    assert curve[-1] < curve[0]


def test_recipe_leaves_out_how_the_run_executes():
    a, b = TrainConfig(batch_size=8), TrainConfig(batch_size=8, processes=2, gradient_accumulation=2,
                                                  gradient_checkpointing=True)
    assert a.recipe() == b.recipe() and "processes" not in a.recipe()
    assert a.recipe() != TrainConfig(batch_size=4).recipe()


@pytest.mark.slow
def test_two_processes_give_one_process_loss_curve(tiny_models, tmp_path):
    one, curve = _run(tiny_models[1], tmp_path / "one")
    two, two_curve = _run(tiny_models[1], tmp_path / "two", processes=2, gradient_accumulation=2)
    assert (one.processes, two.processes) == (1, 2) and two.spec.name_or_path == str(tmp_path / "two")
    _assert_same_run(one, two, curve, two_curve)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no scratch or temp dirs


@pytest.mark.slow
def test_failing_rank_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"training rank \d: .*does not exist"):
        fine_tune(str(tmp_path / "missing"), EXAMPLES, tmp_path / "out", TrainConfig(batch_size=8, processes=2))
    assert not (tmp_path / "out").exists()


TRAIN = """
import sys
sys.path.insert(0, sys.argv[3])
from test_training_processes import EXAMPLES, kill_config
from gen_ssd_dagster.core.training.sft import fine_tune
fine_tune(sys.argv[1], EXAMPLES, sys.argv[2], kill_config(), checkpoint_every_steps=5)
"""


def kill_config() -> TrainConfig:
    return TrainConfig(epochs=15, batch_size=4, learning_rate=3e-3, warmup_steps=5, log_every=10, processes=2)


@pytest.mark.slow
def test_sigkilled_two_process_run_resumes_exactly(tiny_models, tmp_path):
    base = tiny_models[0]
    out, clean = tmp_path / "killed" / "student", tmp_path / "clean" / "student"
    scratch = resume_dir(out)

    proc = start_child(TRAIN, base, out, Path(__file__).parent)
    kill_when(proc, lambda: saved_training_step(scratch) >= 10)
    step_at_kill, mtime = saved_training_step(scratch), (scratch / STATE_FILE).stat().st_mtime_ns
    time.sleep(3)  # the ranks died with torchrun: nothing trains on and overwrites the state
    assert (scratch / STATE_FILE).stat().st_mtime_ns == mtime and not out.exists()

    resumed = fine_tune(base, EXAMPLES, out, kill_config(), checkpoint_every_steps=5)
    total = -(-len(EXAMPLES) * 15 // 4)
    assert resumed.resumed_from_step == step_at_kill and resumed.steps == total and step_at_kill < total
    assert sorted(p.name for p in out.parent.iterdir()) == ["student"]  # scratch removed

    reference = fine_tune(base, EXAMPLES, clean, kill_config())
    a, b = _weights(out), _weights(clean)
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed two-process run must end where an uninterrupted one does"
    assert resumed.final_loss == reference.final_loss


def test_run_config_carries_the_layout():
    from gen_ssd_dagster.run_config.asset_configs import DistillConfig

    train = DistillConfig(train={"processes": 2, "batch_size": 16, "gradient_accumulation": 2}).train.to_core()
    assert (train.processes, train.gradient_accumulation, train.micro_batch) == (2, 2, 4)
