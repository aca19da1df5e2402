"""Supervised fine-tuning of a causal LM on (question, solution) pairs, loss on the solution only.

Each question is prompted through the model's own format (`prompts.Prompter`: its chat template,
or the plain format), and the solution is closed by the model's end-of-turn token, exactly as the
student is prompted when it scores candidates and when it is evaluated.

Small on purpose: examples read as a stream and shuffled within a bounded buffer (`examples.py`),
padded per batch, AdamW with linear warmup and a decay, optional bf16 autocast (CUDA, or a CPU
with native bf16), and an atomic `save_pretrained` so a crash never leaves a half-written
checkpoint where a finished one is expected.

Devices and processes: the model trains on its spec's device (CUDA when present by default).
`TrainConfig.processes > 1` runs the same loop in that many processes through torchrun and
`accelerate` (DDP, or FSDP with `fsdp`; `launch.py`): each global batch of `batch_size` examples
is cut into processes x gradient_accumulation micro batches, and the loss scaling keeps the
step's gradient that of the whole batch, so the loss curve is one process's (fp32 rounding aside).

Resuming: every `checkpoint_every_steps` steps or `checkpoint_every_s` seconds, the run's state
(full model and optimizer state, scheduler, each rank's RNG, step, token count, losses) is written
atomically by rank 0 to a scratch directory beside the output, `.<out_dir name>.resume/`, and read
by every rank. Starting the same run again (same base model, examples and config recipe, so the
same fingerprint; the process count may differ) continues from that state, and the result equals
an uninterrupted run's with the same process count; a state of another run or an unreadable one
is discarded with a warning. The scratch directory is removed once the finished checkpoint is saved.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hashlib
import json

import torch
import torch.nn.functional as F

from gen_ssd_dagster.core.errors import ConfigError, GenSSDError
from gen_ssd_dagster.core.engines.models import ModelSpec, context_size, load_model, load_tokenizer
from gen_ssd_dagster.core.engines.prompts import Prompter
from gen_ssd_dagster.core.training import parallel
# IGNORE and encode_examples are re-exported: they were defined here first
from gen_ssd_dagster.core.training.examples import (IGNORE, Encoder, ExampleSource, collate, count, encode_examples,
                                                     example_source, training_batches)
from gen_ssd_dagster.core.training.averaging import WeightAverage
from gen_ssd_dagster.core.types import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run.

    epochs: passes over the examples; fractions allowed (0.5 = half the examples once).
    learning_rate: peak AdamW rate, reached after `warmup_steps`, then decayed by `lr_schedule`.
    lr_schedule: how the rate falls from its peak to `min_lr_ratio` of it at the end of the run:
        "cosine" (half a cosine), "linear", or "constant" (no decay; `min_lr_ratio` unused).
    min_lr_ratio: where the decay ends, as a fraction of the peak rate, in [0, 1].
    ema_decay: 0 = off; in (0, 1), an exponential moving average of the weights is kept in float32
        (updated after every optimizer step: ema = decay * ema + (1 - decay) * weights, i.e. about
        the last 1 / (1 - decay) steps) and the average, not the last weights, is saved. Averaging
        makes the result depend less on the order of the last batches (docs/training-recipe.md).
        Not with `fsdp` (its weights are sharded).
    batch_size: examples per optimizer step, padded to the longest in the batch.
    max_length: prompt + completion + EOS are cut to this many tokens.
    weight_decay: AdamW weight decay.
    warmup_steps: steps of linear warmup from 0.
    seed: seeds the shuffling (and dropout, if the model has any).
    shuffle_buffer: examples tokenized, shuffled and batched together (`examples.py`): memory is
        bounded by this many examples whatever the data's size; a set no larger is shuffled as a
        whole. 16,384 examples of 4k tokens take 256 MiB.
    bf16: bfloat16 autocast: on CUDA where the GPU has bf16, on the CPU where it computes bf16
        natively (`native_bf16`); elsewhere training runs in float32 (`TrainResult.precision` says
        which), since emulated bf16 was ~11x slower on a CPU. On a native-bf16 CPU it pays for wide
        models only: 2x faster than float32 at SmolLM2-135M's width, 1.4x slower for the demo's
        128-wide teacher (benchmarks/training_precision.py). Weights stay in the model spec's dtype.
    log_every: steps between progress reports.
    processes: training processes (one per GPU; DDP, or FSDP with `fsdp`), started by torchrun
        (`launch.py`); 1 = train in the calling process. The model goes on its spec's `device`.
    gradient_accumulation: micro batches per process per optimizer step. processes x micro batch x
        gradient_accumulation = batch_size: batch_size must divide by processes x gradient_accumulation.
    gradient_checkpointing: recompute activations in the backward pass (less memory, ~1/3 slower).
    fsdp: shard weights, gradients and optimizer state over the processes (FSDP2), for students
        larger than one GPU; needs processes >= 2 and GPUs (on CPUs accelerate runs DDP instead).

    The last four say how a run is executed, not what it computes: they are left out of the
    run's fingerprint (`recipe`), so a run may resume with another process count.
    """

    epochs: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    max_length: int = 256
    weight_decay: float = 0.0
    warmup_steps: int = 10
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.0
    seed: int = 0
    shuffle_buffer: int = 16_384
    bf16: bool = False
    log_every: int = 20
    processes: int = 1
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    fsdp: bool = False

    def recipe(self) -> dict:
        """The settings that decide the trained weights (all but how the run is executed)."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if k not in EXECUTION_SETTINGS}

    @property
    def micro_batch(self) -> int:
        """Examples per forward pass of one process."""
        return self.batch_size // (self.processes * self.gradient_accumulation)

    def validate(self) -> None:
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.ema_decay and self.fsdp:
            raise ConfigError("ema_decay averages whole weights: it does not work with fsdp (sharded weights)")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {self.log_every}")
        if self.processes < 1:
            raise ConfigError(f"processes must be >= 1, got {self.processes}")
        if self.gradient_accumulation < 1:
            raise ConfigError(f"gradient_accumulation must be >= 1, got {self.gradient_accumulation}")
        if self.batch_size % (self.processes * self.gradient_accumulation):
            raise ConfigError(f"batch_size ({self.batch_size}) must divide by processes ({self.processes}) x "
                              f"gradient_accumulation ({self.gradient_accumulation}): it is the global batch")
        if self.fsdp and self.processes < 2:
            raise ConfigError(f"fsdp shards over several processes: it needs processes >= 2, got {self.processes}")


LR_SCHEDULES = ("cosine", "linear", "constant")
EXECUTION_SETTINGS = ("processes", "gradient_accumulation", "gradient_checkpointing", "fsdp")


@dataclass(frozen=True)
class TrainResult:
    path: Path  # the saved checkpoint (model + tokenizer)
    steps: int
    final_loss: float  # mean per-token loss over the last `log_every` steps
    train_tokens: int  # non-padding tokens seen, prompt tokens included
    seconds: float
    resumed_from_step: int = 0  # 0 = started from the base model
    spec: ModelSpec | None = None  # the saved checkpoint with the base's dtype and prompt settings
    precision: str = "fp32"  # what the forward pass ran in: "bf16" (autocast) or "fp32"
    processes: int = 1


STATE_FILE = "state.pt"
STATE_FORMAT = 2  # 2: full state dicts of torch.distributed.checkpoint (optimizer keyed by parameter name), RNG per rank


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX). Without it torch emulates bf16,
    and a training step under autocast was ~11x slower than in float32 (2-core AVX2 EPYC, measured
    2026-12-02). Read from /proc/cpuinfo; False where that is not available."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resume_dir(out_dir: str | Path) -> Path:
    """The scratch directory of a run's mid-run checkpoints: beside `out_dir`, never inside it."""
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / f".{out_dir.name}.resume"


def _fingerprint(spec: ModelSpec, examples: Sequence[tuple[str, str]] | ExampleSource, config: TrainConfig) -> str:
    """What makes two runs the same run: the base weights, the examples (their digest) and the
    config's recipe (not its process count: a state resumes with another)."""
    from gen_ssd_dagster.core.engines.models import model_version

    digest = example_source(examples).digest()
    blob = json.dumps([model_version(spec), spec.revision, digest, config.recipe()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_state(scratch: Path, state: dict) -> None:
    """Write the state file atomically: a crash mid-write leaves the previous state in place."""
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / f"{STATE_FILE}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, scratch / STATE_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_state(scratch: Path, fingerprint: str) -> dict | None:
    """The saved state of this very run, or None (nothing saved, another run's, or unreadable)."""
    path = scratch / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or corrupt: start over rather than fail
        log.warning("ignoring unreadable training state %s (%s: %s); starting from the base model",
                    path, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log.warning("ignoring training state %s of another run (different base, examples or config)", path)
        return None
    if state.get("format") != STATE_FORMAT:
        log.warning("ignoring training state %s written by an older version of fine_tune", path)
        return None
    return state


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based, of `total`) as a fraction of the peak:
    linear warmup, then `config.lr_schedule` from 1 down towards `min_lr_ratio`."""
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.lr_schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)  # the step after the last would reach the floor
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.lr_schedule == "cosine" else 1 - progress
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape


def fine_tune(
    base: ModelSpec | str,
    examples: Sequence[tuple[str, str]] | ExampleSource,
    out_dir: str | Path,
    config: TrainConfig,
    progress: Progress | None = None,
    checkpoint_every_steps: int = 0,
    checkpoint_every_s: float = 600.0,
) -> TrainResult:
    """Fine-tune `base` on (question, solution) pairs and save it (model + tokenizer) to `out_dir`.

    `examples`: a list of pairs, or an `ExampleSource` read as a stream (an exported dataset), in
    memory bounded by `config.shuffle_buffer` examples whatever its size.

    The loss covers solution tokens and the appended end-of-turn token only. A `max_length` past
    the model's context is lowered to the context (and logged). `progress` is called every
    `config.log_every` steps (and at the last) with {"step", "total_steps", "loss", "tokens_per_s"}.
    An existing `out_dir` is replaced only once the new checkpoint is completely written.
    Mid-run state is saved every `checkpoint_every_steps` steps (0 = not by steps) and every
    `checkpoint_every_s` seconds (0 = not by time) and resumed by the same run (module docstring).
    With `config.processes > 1` the run is handed to `config.processes` processes (`launch.py`);
    inside such a run (torchrun's WORLD_SIZE), every process calls this and rank 0 saves.
    """
    config.validate()
    if checkpoint_every_steps < 0 or checkpoint_every_s < 0:
        raise ConfigError(f"checkpoint_every_steps and checkpoint_every_s must be >= 0, got "
                          f"{checkpoint_every_steps} and {checkpoint_every_s}")
    examples = example_source(examples)
    if not len(examples):
        raise GenSSDError("fine_tune got no training examples: nothing to learn from")
    spec = base if isinstance(base, ModelSpec) else ModelSpec(str(base))
    world = parallel.world_size()
    if config.processes > 1 and world == 1:
        from gen_ssd_dagster.core.training.launch import train_in_processes

        return train_in_processes(spec, examples, out_dir, config, progress, checkpoint_every_steps, checkpoint_every_s)
    if world != config.processes:
        raise ConfigError(f"TrainConfig.processes is {config.processes} but this run has {world} processes "
                          "(WORLD_SIZE): set processes to the launcher's process count")
    device = parallel.training_device(spec)
    accelerator = parallel.make_accelerator(device, config.fsdp)
    try:
        return _fine_tune(accelerator, spec, examples, out_dir, config, progress, checkpoint_every_steps,
                          checkpoint_every_s)
    finally:
        parallel.release_accelerator(accelerator)


def _fine_tune(accelerator, spec: ModelSpec, examples, out_dir, config: TrainConfig, progress,
               checkpoint_every_steps: int, checkpoint_every_s: float) -> TrainResult:
    """`fine_tune` in one process of the run (the only one, or one rank of several)."""
    from accelerate.utils import gather_object

    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    main = accelerator.is_main_process
    tokenizer, model = load_tokenizer(spec), load_model(spec)
    max_length = config.max_length
    context = context_size(model)
    if context and max_length > context:
        if main:
            log.warning("max_length %d is past the model's context of %d tokens: using %d", max_length, context, context)
        max_length = context
    encoder = Encoder(Prompter(tokenizer, spec.prompt_settings, "student"), max_length)
    n_rows, n_labels = count(examples, encoder, config.shuffle_buffer)  # a pass that keeps nothing
    if not n_rows:
        raise GenSSDError(f"every example's completion lies beyond max_length={max_length}")
    if encoder.dropped and main:
        log.warning("dropped %d of %d examples: no completion token within max_length", encoder.dropped,
                    encoder.dropped + n_rows)

    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else native_bf16()
    use_bf16 = config.bf16 and native
    if config.bf16 and not use_bf16 and main:
        log.info("bf16 asked for, but this %s has no native bf16: training in float32",
                 "GPU" if device.type == "cuda" else "CPU (no avx512_bf16/amx_bf16)")
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    torch.manual_seed(config.seed + rank)  # dropout differs per rank, as its examples do
    gen = torch.Generator().manual_seed(config.seed)  # the same batches on every rank
    total = max(1, math.ceil(config.epochs * n_rows / config.batch_size))
    # Every completion token weighs the same, whatever batch it lands in: the summed loss is divided
    # by the mean label count of a full batch, not by this batch's count. (A per-batch mean would
    # overweight the tokens of short examples, which length grouping puts together: the teacher's
    # style mix would drift toward its shortest style.)
    per_batch = config.batch_size * n_labels / n_rows
    batches = training_batches(examples, encoder, config.batch_size, config.shuffle_buffer, gen)
    optim = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optim = accelerator.prepare(model, optim)
    sched = torch.optim.lr_scheduler.LambdaLR(optim.optimizer, lambda s: lr_factor(s, total, config))

    scratch, fingerprint = resume_dir(out_dir), _fingerprint(spec, examples, config)
    tokens = window_tokens = 0
    average = WeightAverage(accelerator.unwrap_model(model), config.ema_decay) if config.ema_decay else None
    losses: list[float] = []
    first = 0
    state = _load_state(scratch, fingerprint)
    if state is not None:  # the scheduler after the optimizer: its constructor already moved the learning rate
        parallel.load_full_state(model, optim.optimizer, state["model"], state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) == world:
            parallel.set_rng_state(rngs[rank], device)
        elif main:  # the loss curve is the same; only dropout (if any) draws other numbers
            log.warning("resuming a %d-process state with %d processes: RNG states not restored", len(rngs), world)
        if average is not None:
            average.load_state_dict(state["ema"])
        first, tokens, losses = int(state["step"]), int(state["tokens"]), [float(x) for x in state["losses"]]
        if main:
            log.info("resuming training from step %d/%d (%s)", first, total, scratch)
    elif main and scratch.exists():
        shutil.rmtree(scratch, ignore_errors=True)
    accelerator.wait_for_everyone()  # no rank reads the scratch dir while rank 0 clears it

    def checkpoint(done_steps: int) -> None:
        model_state, optim_state = parallel.full_state(model, optim.optimizer)  # collective: all ranks
        rngs = gather_object([parallel.rng_state(device)])
        if main:
            try:
                _save_state(scratch, {
                    "format": STATE_FORMAT, "fingerprint": fingerprint, "step": done_steps, "tokens": tokens,
                    "losses": losses, "model": model_state, "optimizer": optim_state,
                    "ema": average.state_dict() if average is not None else None,
                    "scheduler": sched.state_dict(), "rng": rngs, "processes": world})
            except OSError as exc:  # a full disk costs resumability, not the run: the previous state stays
                log.warning("could not save training state at step %d to %s: %s", done_steps, scratch, exc)
            else:
                log.info("saved training state at step %d/%d to %s", done_steps, total, scratch)
        accelerator.wait_for_everyone()

    for _ in range(first):  # a resumed run skips the batches it has trained on (same draws, same order)
        next(batches)
    model.train()
    parts = world * config.gradient_accumulation
    start = window_start = last_save = time.perf_counter()
    for step in range(first, total):
        step_rows = next(batches)
        mine = parallel.micro_batches(list(range(len(step_rows))), parts)[rank * config.gradient_accumulation:][
            : config.gradient_accumulation]
        sums = torch.zeros(4, dtype=torch.float64)  # summed NLL, labels, tokens, rank 0's "save now"
        for k, part in enumerate(mine):
            # A rank whose share of a short last batch is empty still runs a pass, weighted 0: DDP and
            # FSDP need every rank in every gradient exchange.
            batch = collate([step_rows[i] for i in part] or step_rows[:1], tokenizer.pad_token_id)
            labels = batch.pop("labels")[:, 1:].to(device)
            batch = {key: v.to(device) for key, v in batch.items()}
            sync = k + 1 == len(mine)
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = model(**batch).logits[:, :-1]
                nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                      reduction="sum")
                # DDP and FSDP average the ranks' gradients: x world undoes the mean, so the step's
                # gradient is the global batch's summed NLL over `per_batch`, as in one process.
                accelerator.backward(nll * (world / per_batch if part else 0.0))
            if part:
                sums += torch.tensor([nll.item(), int((labels != IGNORE).sum()), int(batch["attention_mask"].sum()), 0],
                                     dtype=torch.float64)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if average is not None:
            average.update(accelerator.unwrap_model(model))
        sched.step()
        optim.zero_grad(set_to_none=True)

        due = bool(checkpoint_every_s and time.perf_counter() - last_save >= checkpoint_every_s)
        sums[3] = float(main and due)  # rank 0's clock decides for all: the save is a collective
        if world > 1:
            sums = accelerator.reduce(sums.to(device), "sum").cpu()
        nll_sum, n_labels, n = float(sums[0]), int(sums[1]), int(sums[2])
        tokens, window_tokens = tokens + n, window_tokens + n
        losses.append(nll_sum / max(1, n_labels))  # mean per token
        if main and ((step + 1) % config.log_every == 0 or step + 1 == total):
            now = time.perf_counter()
            recent = losses[-config.log_every :]
            info = {"step": step + 1, "total_steps": total, "loss": sum(recent) / len(recent),
                    "tokens_per_s": window_tokens / max(now - window_start, 1e-9)}
            log.info("step %d/%d loss %.4f %.0f tok/s", info["step"], total, info["loss"], info["tokens_per_s"])
            if progress:
                progress(info)
            window_start, window_tokens = now, 0
        if step + 1 < total and ((checkpoint_every_steps and (step + 1) % checkpoint_every_steps == 0) or sums[3] > 0):
            checkpoint(step + 1)
            last_save = time.perf_counter()

    model.eval()
    if average is not None:  # the average is what the run leaves, not its last weights
        average.copy_to(accelerator.unwrap_model(model))
    weights = parallel.full_model_state(model)  # collective: all ranks
    path = Path(out_dir).resolve()
    if main:
        save_atomically(accelerator.unwrap_model(model), tokenizer, out_dir, weights)
        shutil.rmtree(scratch, ignore_errors=True)  # the finished checkpoint supersedes the mid-run state
    accelerator.wait_for_everyone()
    tail = losses[-config.log_every :]
    return TrainResult(path, total, sum(tail) / len(tail), tokens, time.perf_counter() - start, first,
                       spec.with_weights(path), "bf16" if use_bf16 else "fp32", world)


def save_atomically(model, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """`save_pretrained` (of `state_dict` when given: an FSDP model's gathered weights) into a temp
    dir beside `out_dir`, then rename it into place."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = None
    try:
        model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():  # move the old one aside first: rename cannot replace a non-empty dir
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}"
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            old.rename(out_dir)  # the previous checkpoint goes back where it was
        # safetensors' own I/O error ("No space left on device") does not say where it was writing
        exc.add_note(f"while saving the checkpoint to {out_dir} (the previous one, if any, is kept)")
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir
