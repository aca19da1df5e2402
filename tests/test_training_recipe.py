"""The recipe knobs of TrainConfig (docs/training-recipe.md): learning-rate schedules and weight averaging."""

import math

import pytest
import torch
from safetensors.torch import load_file

from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune, lr_factor, resume_dir

EXAMPLES = [(f"What is {i} + {i % 5}?", f"{i} + {i % 5} = {i + i % 5}\n#### {i + i % 5}") for i in range(16)]


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_schedules_by_hand():
    # 2 warmup steps, then 10 steps of decay from the peak towards the floor (10 - 2 = 8 steps of progress)
    cosine = TrainConfig(warmup_steps=2, min_lr_ratio=0.2)
    linear = TrainConfig(warmup_steps=2, min_lr_ratio=0.0, lr_schedule="linear")
    constant = TrainConfig(warmup_steps=2, lr_schedule="constant")
    for config in (cosine, linear, constant):
        assert [lr_factor(s, 10, config) for s in (0, 1)] == pytest.approx([1 / 3, 2 / 3])
        assert lr_factor(2, 10, config) == pytest.approx(1.0)
    assert lr_factor(6, 10, cosine) == pytest.approx(0.2 + 0.8 * 0.5)  # halfway: cos(pi/2) = 0
    assert lr_factor(9, 10, cosine) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert [lr_factor(s, 10, linear) for s in (4, 6, 9)] == pytest.approx([0.75, 0.5, 1 / 8])
    assert [lr_factor(s, 10, constant) for s in (5, 9)] == [1.0, 1.0]
    # today's default: cosine towards 10%
    assert lr_factor(99, 100, TrainConfig()) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


@pytest.mark.parametrize("setting, value", [("lr_schedule", "cosnie"), ("min_lr_ratio", 1.5), ("min_lr_ratio", -0.1),
                                            ("ema_decay", 1.0), ("ema_decay", -0.5)])
def test_bad_recipe_names_the_setting(setting, value):
    with pytest.raises(ConfigError, match=setting):
        TrainConfig(**{setting: value}).validate()
    with pytest.raises(ConfigError, match="fsdp"):
        TrainConfig(ema_decay=0.9, fsdp=True, processes=2).validate()


def test_saved_weights_are_the_average(tiny_models, tmp_path):
    """One optimizer step: the average of decay 0.5 is (start + raw) / 2, and that is what is saved."""
    _, student = tiny_models
    one_step = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-2, warmup_steps=0, lr_schedule="constant")
    raw = fine_tune(student, EXAMPLES, tmp_path / "raw", one_step)
    avg = fine_tune(student, EXAMPLES, tmp_path / "avg", TrainConfig(**{**one_step.recipe(), "ema_decay": 0.5}))
    assert raw.steps == avg.steps == 1
    start, w_raw, w_avg = weights(student), weights(raw.path), weights(avg.path)
    assert any(not torch.equal(w_raw[k], w_avg[k]) for k in w_raw)
    for k in w_raw:
        assert torch.allclose(w_avg[k], (start[k] + w_raw[k]) / 2, atol=1e-6), k


def test_average_lags_the_raw_weights_over_a_run(tiny_models, tmp_path):
    """Over many steps the average sits between where the run started and where it ended."""
    _, student = tiny_models
    config = TrainConfig(epochs=4, batch_size=4, learning_rate=1e-2, warmup_steps=0)
    raw = fine_tune(student, EXAMPLES, tmp_path / "raw", config)
    avg = fine_tune(student, EXAMPLES, tmp_path / "avg", TrainConfig(**{**config.recipe(), "ema_decay": 0.9}))
    start, w_raw, w_avg = weights(student), weights(raw.path), weights(avg.path)
    moved = lambda w: sum(float((w[k] - start[k]).norm()) for k in start)  # noqa: E731
    assert 0 < moved(w_avg) < moved(w_raw)
    assert raw.final_loss == pytest.approx(avg.final_loss)  # the same run: only what is saved differs


def test_a_crashed_averaged_run_resumes_to_the_same_weights(tiny_models, tmp_path):
    _, student = tiny_models
    config = TrainConfig(epochs=4, batch_size=4, learning_rate=1e-2, warmup_steps=0, ema_decay=0.8, log_every=4)
    whole = fine_tune(student, EXAMPLES, tmp_path / "whole", config)

    def crash_at_step_8(info):
        if info["step"] == 8:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        fine_tune(student, EXAMPLES, out, config, progress=crash_at_step_8, checkpoint_every_steps=4)
    assert (resume_dir(out) / "state.pt").is_file() and not out.exists()
    resumed = fine_tune(student, EXAMPLES, out, config, checkpoint_every_steps=4)
    assert resumed.resumed_from_step == 4 and resumed.steps == whole.steps == 16
    w_whole, w_resumed = weights(whole.path), weights(resumed.path)
    for k in w_whole:
        assert torch.allclose(w_whole[k], w_resumed[k], atol=1e-6), k
