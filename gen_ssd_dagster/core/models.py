"""Loading causal LMs and tokenizers: one code path for a hub id and a local checkpoint.

The embedded demo saves its teacher and student with `save_pretrained` and loads them back here,
exactly as a user's Qwen/Llama checkpoint would be.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelLoadError


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    name_or_path: a local directory written by `save_pretrained`, or a hub id (needs the network).
    revision: hub revision (branch, tag or commit); ignored for local paths.
    dtype: "float32" or "bfloat16".
    trust_remote_code: off unless you trust the checkpoint's code.
    """

    name_or_path: str
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False

    @property
    def is_local(self) -> bool:
        p = self.name_or_path
        return p.startswith(("/", ".", "~")) or os.path.isdir(p)


def _check_local(spec: ModelSpec) -> None:
    path = Path(spec.name_or_path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} does not exist (or is not a directory)")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model path {path} has no config.json: not a save_pretrained checkpoint")


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    if spec.is_local:
        _check_local(spec)
    try:
        tok = AutoTokenizer.from_pretrained(
            spec.name_or_path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load tokenizer from {spec.name_or_path}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec) -> PreTrainedModel:
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
            attn_implementation="eager",
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load model from {spec.name_or_path}: {exc}") from exc
    model.eval()
    return model


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
