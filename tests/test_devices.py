"""The `device` setting of a model: checked before anything loads, carried by every spec made from
it, never part of a version. (On a GPU: tests/test_gpu.py.)"""

import dataclasses

import pytest
import torch

from gen_ssd_dagster.core.engines.devices import attention_implementation, autocast_dtype, resolve_device
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer, model_version
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.defs.resources import ModelsResource
from gen_ssd_dagster.store import Home

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a machine without CUDA says")


def test_settings_that_every_machine_takes():
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else cpu
    assert resolve_device("auto") == expected and resolve_device("auto-map") == expected
    for bad in ("gpu", "cuda:x", "mps", ""):
        with pytest.raises(ConfigError, match=r"models.student_device is .*expected 'auto', 'cpu', 'cuda', 'cuda:N'"):
            resolve_device(bad, "models.student_device")
    assert attention_implementation(cpu, torch.float32) == attention_implementation(cpu, torch.bfloat16) == "sdpa"
    assert autocast_dtype(cpu) is None  # inference and CPU numbers stay as they were


@no_cuda
def test_cuda_without_cuda_names_the_setting():
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda", "models.teacher_device")
    assert str(caught.value).startswith("models.teacher_device is 'cuda' but this machine has no CUDA device "
                                        "(torch.cuda.is_available() is False")
    with pytest.raises(ConfigError, match="models.teacher_device is 'cuda:1' but this machine has no CUDA"):
        resolve_device("cuda:1", "models.teacher_device")


def test_device_is_a_model_setting_of_the_run_config_but_not_of_the_version(tiny_models):
    assert ModelsResource.model_fields["teacher_device"].default == "auto"
    assert "auto-map" in ModelsResource.model_fields["student_device"].description
    models = ModelsResource(teacher=str(tiny_models[0]), teacher_device="cpu", student_device="cpu")
    spec = models.configured_spec("teacher")
    assert spec.device == "cpu"
    assert model_version(spec) == model_version(dataclasses.replace(spec, device="auto"))
    trained = spec.with_weights(str(tiny_models[1]))  # a trained student keeps the base's device
    assert trained.device == "cpu" and trained.name_or_path == str(tiny_models[1])
    # A spec stored by an earlier run is placed on the device configured now.
    assert models.placed(dataclasses.replace(spec, device="cuda:3"), "teacher").device == "cpu"
    assert models.make_scorer(ModelSpec(str(tiny_models[1]), device="cuda:3")).model.device.type == "cpu"


@no_cuda
def test_a_missing_gpu_fails_before_the_demo_pair_is_built(tmp_path):
    home = Home.resolve(str(tmp_path / "home")).make()
    models = ModelsResource(teacher_device="cuda")
    with pytest.raises(ConfigError, match="models.teacher_device is 'cuda' but this machine has no CUDA device"):
        models.teacher_spec(home)
    assert not home.demo_models.exists()  # nothing was built or loaded
    with pytest.raises(ConfigError, match="models.student_device is 'cuda:0'"):
        ModelsResource(student_device="cuda:0").student_spec(home)


@no_cuda
def test_gen_ssd_demo_refuses_a_missing_gpu_at_once(tmp_path, capsys):
    from gen_ssd_dagster.cli import main

    assert main(["--home", str(tmp_path), "demo", "--device", "cuda"]) != 0
    assert "gen-ssd demo --device is 'cuda' but this machine has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "library_demo" / "models").exists()


def test_load_model_places_the_model(tiny_models):
    spec = ModelSpec(str(tiny_models[1]), device="cpu")
    model = load_model(spec)
    assert model.device.type == "cpu" and model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="ModelSpec.device is 'tpu'"):
        load_model(dataclasses.replace(spec, device="tpu"))


def test_auto_map_loads_through_accelerate_and_scores_the_same(tiny_models):
    from test_kv_batch import padded_two_step_logprobs

    spec = ModelSpec(str(tiny_models[0]), device="cpu")
    tok = load_tokenizer(spec)
    mapped = load_model(dataclasses.replace(spec, device="auto-map"))
    assert mapped.device.type == "cpu"  # without a GPU the whole model stays on the CPU
    plain, _ = padded_two_step_logprobs(load_model(spec), tok)
    got, _ = padded_two_step_logprobs(mapped, tok)
    assert torch.allclose(got.cpu(), plain, atol=1e-5)


def test_gpu_check_runs_without_cuda_and_imports_no_pipeline_package(tmp_path):
    """benchmarks/gpu_check.py --quick, as its own process (sys.modules starts empty there)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "check.md"
    args = [sys.executable, "-X", "importtime", str(repo / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(out)]
    if torch.cuda.is_available():
        args.append("--cpu-only")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported and not imported & {"dagster", "duckdb", "mlflow", "vllm"}
    table = out.read_text()
    assert table in done.stdout
    assert "no CUDA: GPU columns not measured" in table
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| ")}
    for measure in ("teacher tokens/s (float32)", "scorer tokens/s (float32)",
                    "training tokens/s (float32 weights; CUDA: bf16 autocast)"):
        cpu, of_matmul, cuda = (c.strip() for c in rows[measure][:3])
        assert float(cpu.replace(",", "")) > 0 and of_matmul.endswith("%") and cuda == "not measured", rows[measure]


@no_cuda
@pytest.mark.parametrize("expect", [None, "1"])
def test_gpu_tests_skip_with_the_reason_and_fail_when_a_gpu_is_expected(expect):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "GEN_SSD_EXPECT_GPU"}
    if expect:
        env["GEN_SSD_EXPECT_GPU"] = expect
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_gpu.py",
                          "-k", "beyond_the_count"], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=300)
    if expect:
        assert run.returncode != 0 and "GEN_SSD_EXPECT_GPU=1 but this test needs a CUDA GPU" in run.stdout, run.stdout
    else:
        assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout
        assert "needs a CUDA GPU: torch.cuda.is_available() is False" in run.stdout
