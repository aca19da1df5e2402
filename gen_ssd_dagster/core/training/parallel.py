"""What `fine_tune` needs to run on one device or as one of several processes (`accelerate`).

One code path for every layout: a single process on the CPU or a GPU, DDP over N processes (gloo on
CPUs, NCCL on GPUs), FSDP (`TrainConfig.fsdp`, GPUs only: on CPUs accelerate falls back to DDP).
The run's state always goes through torch's full (unsharded) state dicts, so a state saved by
any layout loads into any other.
"""

from __future__ import annotations

import os

import torch

from gen_ssd_dagster.core.errors import ConfigError


def world_size() -> int:
    """Processes of this run, as torchrun / `accelerate launch` announce them (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_device(spec) -> str:
    """"cpu" or "cuda[:i]" from the spec's `device` ("auto" = CUDA when present, else the CPU)."""
    device = str(getattr(spec, "device", "auto") or "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"model device {device!r}: this machine has no CUDA device (use 'auto' or 'cpu')")
        if ":" in device and world_size() > 1:
            raise ConfigError(f"model device {device!r}: with several processes each takes cuda:<local rank>; "
                              "name 'cuda' or 'auto'")
        return device
    raise ConfigError(f"model device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")


def make_accelerator(device: str, fsdp: bool):
    """The run's `Accelerator`: it joins the process group torchrun set up and wraps the model in
    DDP or FSDP. Mixed precision stays ours (`fine_tune`'s autocast), as does the loss scaling."""
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))  # accelerate's single-GPU device is the current one
    plugin = None
    if fsdp:
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                state_dict_type="FULL_STATE_DICT")
    return Accelerator(cpu=device == "cpu", fsdp_plugin=plugin, mixed_precision="no")


def release_accelerator(accelerator) -> None:
    """Forget accelerate's process-wide state after a single-process run, so that the next run in
    this process may pick another device (accelerate refuses a changed state otherwise)."""
    if accelerator.num_processes == 1:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def micro_batches(batch: list[int], parts: int) -> list[list[int]]:
    """`batch` cut into `parts` consecutive runs whose sizes differ by one at most (some are empty
    when the batch is shorter than `parts`, e.g. the last of a pass)."""
    q, r = divmod(len(batch), parts)
    out, start = [], 0
    for k in range(parts):
        out.append(batch[start : start + q + (k < r)])
        start += q + (k < r)
    return out


def full_state(model, optim) -> tuple[dict, dict]:
    """(model, optimizer) state dicts, unsharded, on the CPU of rank 0 (empty on the other ranks).
    A collective call: every rank must make it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optim, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_model_state(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model, optim, model_state: dict, optim_state: dict) -> None:
    """Load states of `full_state` (read from disk by every rank) into this rank's model and optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optim, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


def rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
