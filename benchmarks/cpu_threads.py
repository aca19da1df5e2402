"""Torch threads on a small CPU: the demo teacher's training steps with 1 thread against torch's default.

    python benchmarks/cpu_threads.py [--steps 120] [--threads 1,2]

The demo teacher (`DemoModelsConfig`: 128 wide, 4 layers, in its own precision setting) is
initialised once, then trained for `--steps` steps of 16 of its own training examples in a fresh
child process per thread count (`torch.set_num_threads`, set before any work), the arms
alternating twice. Printed: seconds per arm and the ratio of each to the first thread count,
measured in this run. The tour's demo build is about 2,250 such steps, so this says what
`OMP_NUM_THREADS` the tour should run with on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time, torch
threads, init, steps, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
from gen_ssd_dagster.core.demo.models import DemoModelsConfig, teacher_examples
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
config = DemoModelsConfig()
examples = teacher_examples(config)[: steps * config.batch_size]
train = TrainConfig(epochs=1, learning_rate=config.learning_rate, batch_size=config.batch_size, bf16=config.bf16,
                    warmup_steps=config.warmup_steps, max_length=384, log_every=10_000)
start = time.perf_counter()
result = fine_tune(init, examples, out, train)
print(json.dumps({"seconds": time.perf_counter() - start, "steps": result.steps, "precision": result.precision}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    args = parser.parse_args()
    from gen_ssd_dagster.core.demo.models import DemoModelsConfig, init_model, teacher_examples, train_tokenizer

    config = DemoModelsConfig()
    root = Path(tempfile.mkdtemp(prefix="cpu-threads-"))
    texts = [q + s for q, s in teacher_examples(config)[:2000]]
    tokenizer = train_tokenizer(texts, config.teacher_vocab)
    init = init_model(tokenizer, config.teacher_hidden, config.teacher_layers, config.teacher_heads, 0, root / "init")
    counts = [int(t) for t in args.threads.split(",")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    times: dict[int, list[float]] = {t: [] for t in counts}
    for _ in range(2):
        for t in counts:
            done = subprocess.run([sys.executable, "-c", CHILD, str(t), str(init), str(args.steps), str(root / f"out{t}")],
                                  capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            r = json.loads(done.stdout.strip().splitlines()[-1])
            times[t].append(r["seconds"])
            print(f"{t} thread(s): {r['steps']} steps in {r['seconds']:.1f} s ({r['precision']})", flush=True)
    base = min(times[counts[0]])
    for t in counts:
        print(f"{t} thread(s): best {min(times[t]):.1f} s, {min(times[t]) / base:.2f}x the {counts[0]}-thread time "
              f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
