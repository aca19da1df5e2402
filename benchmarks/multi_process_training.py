"""`fine_tune` in two processes (DDP over gloo, one torch thread each) against one process
(`--threads`, default 1), same model, data and global batch, on this machine's CPU.

One thread by default: on the shared 2-core machine (load 9-14) one process with two threads took
300 s for what two processes did in 18 s, a two-thread step waiting whenever a thread is descheduled.

Printed per layout: the training loop's wall time (`TrainResult.seconds`: first step to saved
checkpoint), the whole call's (two processes: torchrun, imports and model loading in each process
included), their ratios to one process, and the last loss (the curves must agree to ~1e-6).
Each figure is the best of `--repeats` alternating runs (the machine is shared).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/multi_process_training.py [--hidden 128] [--layers 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from gen_ssd_dagster.core.demo.models import DemoModelsConfig, init_model, teacher_examples, train_tokenizer
from gen_ssd_dagster.core.engines.prompts import format_prompt
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune


def run(init: Path, examples, config: TrainConfig, out: Path) -> tuple[float, float, list[float]]:
    losses = []
    start = time.perf_counter()
    result = fine_tune(init, examples, out, config, progress=lambda info: losses.append(info["loss"]))
    wall = time.perf_counter() - start
    shutil.rmtree(out)
    return result.seconds, wall, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=320)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the one-process run")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)  # two processes get one thread each (torchrun)
    work = Path(tempfile.mkdtemp(prefix="multi_process_training-"))
    try:
        examples = teacher_examples(DemoModelsConfig(n_teacher_problems=args.examples))
        tokenizer = train_tokenizer([format_prompt(q) + " " + s for q, s in examples], 512)
        init = init_model(tokenizer, args.hidden, args.layers, 4, 0, work / "init")
        one = f"1 process, {args.threads} thread(s)"
        layouts = {one: 1, "2 processes (gloo), 1 thread each": 2}
        best: dict[str, tuple] = {}
        for r in range(args.repeats):
            for name, n in layouts.items():
                config = TrainConfig(epochs=args.epochs, learning_rate=1e-3, batch_size=args.batch_size,
                                     warmup_steps=10, log_every=1, processes=n)
                got = run(init, examples, config, work / f"out{n}-{r}")
                if name not in best or got[0] < best[name][0]:
                    best[name] = got
        steps = len(next(iter(best.values()))[2])
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; Llama hidden {args.hidden}, {args.layers} layers; "
              f"{len(examples)} demo pairs, {steps} steps of {args.batch_size}, fp32; best of {args.repeats}\n")
        base_loop, base_wall, base_losses = best[one]
        print(f"{'':36} {'loop s':>8} {'x 1 proc':>8} {'call s':>8} {'x 1 proc':>8} {'last loss':>10} {'max |dloss|':>12}")
        for name, (loop, wall, losses) in best.items():
            diff = max(abs(a - b) for a, b in zip(losses, base_losses))
            print(f"{name:36} {loop:8.2f} {loop / base_loop:8.2f} {wall:8.2f} {wall / base_wall:8.2f} "
                  f"{losses[-1]:10.5f} {diff:12.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
