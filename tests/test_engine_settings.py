"""vLLM engine settings (core/engines/engine_settings.py) and their checks at launch, without vLLM:
the defaults are today's engines, a bad value names its setting, teacher and scorer must fit one GPU,
and the `models` resource reaches every check before an engine starts (real-vLLM tests: test_vllm.py)."""

import dagster as dg
import pytest

from gen_ssd_dagster.core.engines.engine_settings import (EVAL_ENGINE, SCORER_ENGINE, TEACHER_ENGINE,
                                                          VLLMEngineSettings, check_shared_gpu)
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.defs import resources
from gen_ssd_dagster.defs.resources import ModelsResource, resources_from_config

GIB = 1 << 30


def test_defaults_are_the_engines_built_before_these_settings():
    """The kwargs build_engine passed before the settings existed: teacher/eval 0.45, scorer 0.2,
    prefix caching and eager on; on CPU 1 GiB of KV cache, blocks of 32, no chunked prefill."""
    common = dict(tensor_parallel_size=1, dtype="float32", enable_prefix_caching=True, enforce_eager=True, seed=0)
    cpu = dict(enable_chunked_prefill=False, block_size=32, kv_cache_memory_bytes=GIB)
    assert TEACHER_ENGINE.engine_kwargs("float32", on_cpu=True) == {**common, "gpu_memory_utilization": 0.45, **cpu}
    assert SCORER_ENGINE.engine_kwargs("float32", on_cpu=True) == {**common, "gpu_memory_utilization": 0.2, **cpu}
    assert EVAL_ENGINE == TEACHER_ENGINE
    # $VLLM_CPU_KVCACHE_SPACE sizes a CPU cache left empty; a GPU splits by share
    assert "kv_cache_memory_bytes" not in TEACHER_ENGINE.engine_kwargs("float32", on_cpu=True, cpu_kv_cache_env=True)
    assert SCORER_ENGINE.engine_kwargs("bfloat16", on_cpu=False) == {
        **common, "dtype": "bfloat16", "gpu_memory_utilization": 0.2}


def test_each_setting_reaches_the_engine_kwargs():
    engine = VLLMEngineSettings(tensor_parallel_size=2, gpu_memory_utilization=0.6, kv_cache_gib=0.5,
                                max_model_len=4096, enable_prefix_caching=False, dtype="float16",
                                quantization="fp8", enforce_eager=False, block_size=16,
                                extra={"max_num_seqs": 64})
    assert engine.engine_kwargs("float32", on_cpu=False) == dict(
        tensor_parallel_size=2, gpu_memory_utilization=0.6, dtype="float16", enable_prefix_caching=False,
        enforce_eager=False, seed=0, max_model_len=4096, quantization="fp8", block_size=16,
        kv_cache_memory_bytes=GIB // 2, max_num_seqs=64)


@pytest.mark.parametrize("change, message", [
    (dict(gpu_memory_utilization=1.5), "models.scorer_engine.gpu_memory_utilization must be in (0, 1], got 1.5"),
    (dict(gpu_memory_utilization=0.0), "models.scorer_engine.gpu_memory_utilization must be in (0, 1], got 0.0"),
    (dict(tensor_parallel_size=0), "models.scorer_engine.tensor_parallel_size must be an integer >= 1, got 0"),
    (dict(kv_cache_gib=-1.0), "models.scorer_engine.kv_cache_gib must be > 0"),
    (dict(max_model_len=0), "models.scorer_engine.max_model_len must be >= 1"),
    (dict(block_size=0), "models.scorer_engine.block_size must be >= 1"),
    (dict(dtype="fp32"), "models.scorer_engine.dtype must be empty (the model's dtype) or one of auto, half"),
    (dict(extra={"kv_cache_memory_bytes": 1}),
     "models.scorer_engine.extra.kv_cache_memory_bytes repeats the setting models.scorer_engine.kv_cache_gib"),
    (dict(extra={"enable_prefix_caching": False}),
     "models.scorer_engine.extra.enable_prefix_caching repeats the setting models.scorer_engine.enable_prefix_caching"),
    (dict(extra={"model": "/elsewhere"}), "models.scorer_engine.extra.model is set from the model's own settings"),
])
def test_a_bad_value_names_its_setting(change, message):
    engine = VLLMEngineSettings(**change)
    with pytest.raises(ConfigError) as err:
        engine.validate("models.scorer_engine")
    assert message in str(err.value)


def test_an_unknown_extra_key_names_the_closest_engine_argument():
    fields = {"max_num_seqs", "max_num_batched_tokens", "swap_space"}
    VLLMEngineSettings(extra={"max_num_seqs": 8}).validate("models.teacher_engine", fields)
    with pytest.raises(ConfigError, match=r"models\.teacher_engine\.extra\.max_num_seq is not a vLLM engine "
                                          r"argument \(vllm\.EngineArgs\); did you mean 'max_num_seqs'\?"):
        VLLMEngineSettings(extra={"max_num_seq": 8}).validate("models.teacher_engine", fields)
    VLLMEngineSettings(extra={"max_num_seq": 8}).validate("models.teacher_engine", None)  # no vLLM: not checked


def test_tensor_parallel_beyond_the_visible_gpus_is_refused_on_cuda_only():
    engine = VLLMEngineSettings(tensor_parallel_size=2)
    engine.validate("models.teacher_engine", cuda_devices=None)  # not on CUDA
    engine.validate("models.teacher_engine", cuda_devices=2)
    with pytest.raises(ConfigError, match=r"models\.teacher_engine\.tensor_parallel_size is 2 but this machine "
                                          r"has 1 visible CUDA device"):
        engine.validate("models.teacher_engine", cuda_devices=1)


def test_teacher_and_scorer_shares_must_fit_one_gpu():
    check_shared_gpu(TEACHER_ENGINE, SCORER_ENGINE)  # 0.45 + 0.2
    check_shared_gpu(VLLMEngineSettings(gpu_memory_utilization=0.75), SCORER_ENGINE)  # 0.95 exactly
    with pytest.raises(ConfigError) as err:
        check_shared_gpu(VLLMEngineSettings(gpu_memory_utilization=0.8), SCORER_ENGINE)
    assert ("models.teacher_engine.gpu_memory_utilization 0.8 + models.scorer_engine.gpu_memory_utilization "
            "0.2 = 1 of it, more than 0.95") in str(err.value)
    # an engine sized in GiB does not take its share
    check_shared_gpu(VLLMEngineSettings(gpu_memory_utilization=0.9),
                     VLLMEngineSettings(gpu_memory_utilization=0.5, kv_cache_gib=4.0))


def test_only_quantization_changes_the_model_version():
    assert TEACHER_ENGINE.version_suffix() == ""
    assert VLLMEngineSettings(dtype="float16", max_model_len=64, extra={"max_num_seqs": 2}).version_suffix() == ""
    assert VLLMEngineSettings(quantization="fp8").version_suffix() == "+quant-fp8"


def test_yaml_engine_sections_reach_the_core_settings_and_versions(tmp_path):
    section = {"models": {"backend": "vllm", "teacher": str(tmp_path),
                          "teacher_engine": {"tensor_parallel_size": 1, "max_model_len": 2048, "quantization": "fp8",
                                             "extra": {"max_num_seqs": 8}},
                          "scorer_engine": {"gpu_memory_utilization": 0.3}}}
    models = resources_from_config(section)["models"]
    engines = models.engines()
    assert engines["teacher_engine"] == VLLMEngineSettings(max_model_len=2048, quantization="fp8",
                                                           extra={"max_num_seqs": 8})
    assert engines["scorer_engine"] == VLLMEngineSettings(gpu_memory_utilization=0.3)
    assert engines["eval_engine"] == EVAL_ENGINE
    spec = models.configured_spec("teacher")
    assert models.teacher_version(spec).endswith("+quant-fp8")
    assert not models.scorer_version(spec).endswith("+quant-fp8")
    record = models.engine_record("teacher_engine")
    assert record["teacher_engine.max_model_len"] == "2048" and record["teacher_engine.extra.max_num_seqs"] == "8"
    assert not any(k.startswith("scorer_engine") for k in record)
    # transformers: no engine, nothing quantized
    assert ModelsResource(teacher_engine={"quantization": "fp8"}).engines() == {}


def test_a_bad_engine_setting_fails_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"models\.scorer_engine\.gpu_memory_utilization must be in \(0, 1\], got 1\.5"):
        resources_from_config({"models": {"backend": "vllm", "scorer_engine": {"gpu_memory_utilization": 1.5}}})
    # a served teacher has no engine here: its section is not checked
    ModelsResource(backend="vllm", teacher_url="http://127.0.0.1:1/v1",
                   teacher_engine={"gpu_memory_utilization": 1.5}).check_engines()


def test_every_step_using_the_models_checks_them_before_its_body(tmp_path):
    """The resource's setup runs before an asset's body (e.g. trajectories, which builds both engines)."""
    ran = []

    @dg.asset
    def builds_engines(models: ModelsResource):
        ran.append(True)

    bad = ModelsResource(backend="vllm", scorer_engine={"gpu_memory_utilization": 1.5})
    result = dg.materialize([builds_engines], resources={"models": bad}, raise_on_error=False)
    assert not result.success and not ran
    assert "models.scorer_engine.gpu_memory_utilization must be in (0, 1], got 1.5" in str(
        result.get_run_failure_event().event_specific_data.error)


def test_the_shared_gpu_check_runs_on_cuda(monkeypatch):
    """On CUDA (here a stand-in for the device count: this machine has none) the resource checks the
    teacher's tensor parallelism against the GPUs and the teacher + scorer shares."""
    monkeypatch.setattr(resources, "_cuda_devices", lambda: 1)
    ModelsResource(backend="vllm").check_engines()
    with pytest.raises(ConfigError, match="teacher and scorer engines share one GPU"):
        ModelsResource(backend="vllm", teacher_engine={"gpu_memory_utilization": 0.9}).check_engines()
    with pytest.raises(ConfigError, match=r"models\.eval_engine\.tensor_parallel_size is 2"):
        ModelsResource(backend="vllm", eval_engine={"tensor_parallel_size": 2}).check_engines()
    ModelsResource(backend="transformers", teacher_engine={"gpu_memory_utilization": 0.9}).check_engines()


def test_the_gpu_example_config_fits_two_gpus_and_not_one(monkeypatch):
    """configs/gpu_7b_vllm.yaml: the teacher over 2 GPUs, its share and the scorer's fit GPU 0."""
    from pathlib import Path

    from gen_ssd_dagster.pipeline import load_config

    path = str(Path(__file__).resolve().parents[1] / "configs" / "gpu_7b_vllm.yaml")
    monkeypatch.setattr(resources, "_cuda_devices", lambda: 2)
    models = load_config(path)[1]["models"]
    teacher = models.engines()["teacher_engine"]
    assert (teacher.tensor_parallel_size, teacher.enforce_eager, teacher.extra) == (2, False, {"max_num_seqs": 256})
    monkeypatch.setattr(resources, "_cuda_devices", lambda: 1)
    with pytest.raises(ConfigError, match=r"models\.teacher_engine\.tensor_parallel_size is 2 but this machine has 1"):
        load_config(path)
