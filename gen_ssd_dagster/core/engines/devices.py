"""Where a model runs: the `device` setting of a `ModelSpec`, checked before anything loads, and
the attention kernel and autocast dtype that go with a device.

Nothing here has run on a GPU yet (the project's machines have none): the CUDA branches are
written for it and covered by the `gpu` tests (tests/test_gpu.py), which skip without CUDA.
"""

from __future__ import annotations

import importlib.util
import re

import torch

from gen_ssd_dagster.core.errors import ConfigError

AUTO, AUTO_MAP = "auto", "auto-map"
DEVICE_CHOICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'auto-map'"
_CUDA = re.compile(r"^cuda(:(\d+))?$")


def resolve_device(setting: str, name: str = "device") -> torch.device:
    """The torch device of a `device` setting (see `ModelSpec`), or a `ConfigError` that names the
    setting `name` (e.g. "models.teacher_device") when this machine cannot honour it.

    "auto": CUDA when torch sees a GPU, else the CPU. "auto-map": where the inputs go when
    accelerate spreads the layers over every GPU (`device_map="auto"`): cuda:0, else the CPU."""
    value = str(setting).strip().lower()
    if value in (AUTO, AUTO_MAP):
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(value)
    if not match:
        raise ConfigError(f"{name} is {setting!r}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{name} is {setting!r} but this machine has no CUDA device (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}): set it to 'auto' or 'cpu', or run where a GPU and a CUDA build of torch are")
    index = int(match.group(2)) if match.group(2) else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{name} is {setting!r} but this machine has {count} CUDA device(s): "
                          f"cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def is_device_map(setting: str) -> bool:
    """Whether the setting asks accelerate to spread the model over the devices (`device_map`)."""
    return str(setting).strip().lower() == AUTO_MAP


def attention_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """The attention kernel for a model on `device` in `dtype`: flash_attention_2 on CUDA in a
    half dtype when the `flash_attn` package is installed (it has no float32 kernel), else SDPA.

    Eager attention was forced before only because it was the first loader's choice: SDPA gives
    the same NLLs in a padded `KVBatch` (padding inside rows, explicit position ids) to ~1e-6 on
    CPU (tests/test_kv_batch.py); the `gpu` tests compare the CUDA kernels the same way."""
    if (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to on `device`, or None for none: bfloat16 on a CUDA GPU that
    computes it (Ampere and later), nothing elsewhere (on CPU, training decides by the CPU's
    bf16 support). Inference never autocasts: a float32 spec scores in float32 on every
    device, so perplexities and selection thresholds do not move with the hardware; a bfloat16
    spec (`dtype: bfloat16`) is how inference runs in bf16."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
