"""Our SFT loop (core/training/sft.py) against TRL's SFTTrainer, on the same model, data and settings.

One run, CPU, float32, both sides given the same token ids (our `encode_examples`: the student's
prompt format, the end-of-turn token closing the solution) with the loss on the completion only
(TRL: a pre-tokenized dataset with `completion_mask`, `completion_only_loss=True`), the same batch
size, steps, peak learning rate, warmup, cosine decay to 10%, AdamW, gradient clipping at 1.0 and
length-grouped batches. The model is a demo-sized Llama built the way the demo builds its models
(`train_tokenizer` + `init_model`) on demo-world (question, solution) pairs.

Printed: the median wall time and CPU time (this process's) per optimizer step of each (first step
excluded) and their ratio to ours, the wall time of the whole call (loading and data preparation
included), each the best of alternating runs (the machine is shared; the best run is the least
disturbed one; one torch thread by default, for the same reason), the final train loss (mean per completion token over the last 5 steps), and whether
a run interrupted after a mid-run checkpoint and resumed gives the same next-step loss and the same
last-step loss as the uninterrupted run.

    PYTHONPATH=$PWD:/tmp/trl-pkgs .venv/bin/python benchmarks/sft_vs_trl.py [--examples 320] [--epochs 2]

TRL is not a dependency of the project: without it importable this prints why and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gen_ssd_dagster.core.demo.models import DemoModelsConfig, init_model, teacher_examples, train_tokenizer
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer
from gen_ssd_dagster.core.engines.prompts import Prompter, format_prompt
from gen_ssd_dagster.core.training.sft import IGNORE, TrainConfig, encode_examples, fine_tune, resume_dir


class Interrupt(Exception):
    """Stands in for a killed process: raised right after a step, once a checkpoint exists."""


def ours(init: Path, examples, config: TrainConfig, out: Path, stop_after: int = 0, checkpoint_every: int = 0):
    """Per-step (time, loss) of fine_tune; stops with Interrupt after step `stop_after` (0 = never)."""
    marks: list[tuple[int, float, float]] = []

    def progress(info: dict) -> None:  # log_every=1: called after every optimizer step
        marks.append((info["step"], time.perf_counter(), info["loss"], time.process_time()))
        if stop_after and info["step"] == stop_after:
            raise Interrupt

    start = time.perf_counter()
    try:
        fine_tune(ModelSpec(str(init)), examples, out, config, progress, checkpoint_every_steps=checkpoint_every,
                  checkpoint_every_s=0)
    except Interrupt:
        pass
    return marks, time.perf_counter() - start


def trl_run(init: Path, rows, config: TrainConfig, total: int, out: Path, stop_after: int = 0,
            checkpoint_every: int = 0, resume: bool = False, checkpointing: bool = False):
    """The same through SFTTrainer: per-step (step, time, loss) from callbacks. `checkpointing`:
    gradient checkpointing, on in SFTConfig's defaults (it recomputes the forward pass in the
    backward one: memory for time); off, the work per step is the work of our loop."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    marks: list[list] = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append([state.global_step, time.perf_counter(), None, time.process_time()])
            if stop_after and state.global_step == stop_after:
                raise Interrupt

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and marks and marks[-1][0] == state.global_step:
                marks[-1][2] = logs["loss"]

    start = time.perf_counter()
    spec = ModelSpec(str(init))
    tokenizer, model = load_tokenizer(spec), load_model(spec)  # SDPA attention, float32: as fine_tune loads it
    data = Dataset.from_list([{"input_ids": ids, "completion_mask": [int(y != IGNORE) for y in labels]}
                              for ids, labels in rows])
    args = SFTConfig(
        output_dir=str(out), max_steps=total, per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, max_grad_norm=1.0,
        optim="adamw_torch", seed=config.seed, data_seed=config.seed, bf16=False, use_cpu=True,
        completion_only_loss=True, max_length=config.max_length, train_sampling_strategy="group_by_length",
        gradient_checkpointing=checkpointing, logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        save_strategy="steps" if checkpoint_every else "no", save_steps=checkpoint_every or 500,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Watch()])
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts: the table below says it
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    except Interrupt:
        pass
    return [tuple(m) for m in marks], time.perf_counter() - start


def step_seconds(marks, clock: int = 1) -> float:
    """Median seconds per step, from consecutive step-end times (the first step, with warm-up, excluded);
    clock 1 = wall time, 3 = this process's CPU time (less moved by other jobs on a shared machine)."""
    times = [m[clock] for m in marks]
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def tail_loss(marks, n: int = 5) -> float:
    losses = [m[2] for m in marks if m[2] is not None][-n:]
    return sum(losses) / len(losses)


def loss_at(marks, step: int) -> float | None:
    return next((m[2] for m in marks if m[0] == step), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=320, help="demo (question, solution) pairs")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128, help="the demo teacher's width (student: 96)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: two threads on a 2-core machine shared with other jobs were "
                             "slowed several-fold and unevenly, whenever one was descheduled)")
    parser.add_argument("--no-resume", action="store_true", help="skip the interrupt-and-resume check")
    args = parser.parse_args()

    try:
        import trl
    except ImportError as exc:
        print(f"skipped: trl is not importable ({exc}). It is not a project dependency; install it outside the "
              "project's venv, e.g. `pip install --target /tmp/trl-pkgs --no-deps trl`, and put that on PYTHONPATH.")
        return
    import datasets
    import transformers

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="sft_vs_trl-"))
    try:
        examples = teacher_examples(DemoModelsConfig(n_teacher_problems=args.examples))
        tokenizer = train_tokenizer([format_prompt(q) + " " + s for q, s in examples], 512)
        init = init_model(tokenizer, args.hidden, args.layers, 4, 0, work / "init")
        n_params = sum(p.numel() for p in load_model(ModelSpec(str(init))).parameters())
        config = TrainConfig(epochs=args.epochs, learning_rate=1e-3, batch_size=args.batch_size, max_length=256,
                             warmup_steps=10, seed=0, bf16=False, log_every=1)
        spec = ModelSpec(str(init))
        rows = encode_examples(Prompter(load_tokenizer(spec), spec.prompt_settings, "student"), examples,
                               config.max_length)
        total = max(1, math.ceil(config.epochs * len(rows) / config.batch_size))  # as fine_tune counts
        n_tokens = sum(len(ids) for ids, _ in rows)
        print(f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"model: Llama {n_params / 1e6:.2f}M params (hidden {args.hidden}, {args.layers} layers); data: "
              f"{len(rows)} demo pairs, {n_tokens / len(rows):.0f} tokens each on average; {total} steps of "
              f"{config.batch_size}, lr {config.learning_rate}, fp32, CPU\n")

        runs = {"ours": [], "trl": [], "trl, defaults": []}
        for r in range(args.repeats):
            runs["ours"].append(ours(init, examples, config, work / f"ours{r}"))
            runs["trl"].append(trl_run(init, rows, config, total, work / f"trl{r}"))
            runs["trl, defaults"].append(trl_run(init, rows, config, total, work / f"trlgc{r}", checkpointing=True))
        # the fastest of the alternating runs: the one least slowed by other jobs on the machine
        step = {k: min(step_seconds(m) for m, _ in v) for k, v in runs.items()}
        cpu = {k: min(step_seconds(m, 3) for m, _ in v) for k, v in runs.items()}
        wall = {k: min(w for _, w in v) for k, v in runs.items()}
        loss = {k: tail_loss(v[0][0]) for k, v in runs.items()}
        print(f"{'':14} {'wall ms/step':>12} {'x ours':>7} {'CPU ms/step':>12} {'x ours':>7} {'whole call s':>13} "
              f"{'x ours':>7} {'final loss':>11}")
        for k in runs:
            print(f"{k:14} {1000 * step[k]:12.1f} {step[k] / step['ours']:7.2f} {1000 * cpu[k]:12.1f} "
                  f"{cpu[k] / cpu['ours']:7.2f} {wall[k]:13.1f} {wall[k] / wall['ours']:7.2f} {loss[k]:11.4f}")
        print(f"(per step: median over the run; each figure the best of {args.repeats} alternating runs. 'trl': "
              "gradient checkpointing off, as in our loop; 'trl, defaults': SFTConfig's default, on)")
        same = [round(a[2], 6) == round(b[2], 6) for a, b in zip(runs["ours"][0][0], runs["ours"][-1][0])]
        print(f"ours: repeated runs give the same per-step losses: {all(same)}")

        if not args.no_resume:
            cut = total // 2
            print(f"\nresume: checkpoint at step {cut}, interrupted after step {cut + 1}, run again")
            ref = {"ours": runs["ours"][0][0], "trl": runs["trl"][0][0]}
            ours(init, examples, config, work / "ours-cut", stop_after=cut + 1, checkpoint_every=cut)
            resumed_ours, _ = ours(init, examples, config, work / "ours-cut", checkpoint_every=cut)
            trl_run(init, rows, config, total, work / "trl-cut", stop_after=cut + 1, checkpoint_every=cut)
            resumed_trl, _ = trl_run(init, rows, config, total, work / "trl-cut", checkpoint_every=cut, resume=True)
            for k, resumed in (("ours", resumed_ours), ("trl", resumed_trl)):
                a, b = loss_at(ref[k], cut + 1), loss_at(resumed, cut + 1)
                fa, fb = loss_at(ref[k], total), loss_at(resumed, total)
                first = resumed[0][0] if resumed else None
                print(f"{k:5} resumed at step {first}: step {cut + 1} loss {b:.6f} vs uninterrupted {a:.6f} "
                      f"(equal: {b == a}); step {total} loss {fb:.6f} vs {fa:.6f} (equal: {fb == fa})")
            assert not resume_dir(work / "ours-cut").exists(), "our scratch state should be gone after the run"
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
