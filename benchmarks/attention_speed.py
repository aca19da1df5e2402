"""SDPA against eager attention on this machine: teacher and scorer tokens/s, same run, same model.

`load_model` used to force eager attention; it now takes SDPA (tests/test_kv_batch.py shows the
NLLs equal to ~1e-6 with padding inside rows). This measures what that buys on the CPU, on random
Llamas of the demo teacher's shape and of a mid size, with gpu_check.py's workloads: each kernel
is measured `--repeats` times, alternating, and the median is reported with the ratio.

    .venv/bin/python benchmarks/attention_speed.py [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from gpu_check import QUICK, Sizes, build_model, demo_inputs, scorer_run, teacher_rate

from gen_ssd_dagster.core.engines.models import ModelSpec, load_model
from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher

SHAPES = {  # name -> the model's shape; the workload is a CPU-sized one (8 paths x K=4)
    "demo teacher (hidden 128, 4 layers)": dataclasses.replace(
        QUICK, hidden=128, layers=4, heads=4, kv_heads=4, intermediate=384, vocab=512),
    "mid (hidden 384, 8 layers)": dataclasses.replace(
        QUICK, hidden=384, layers=8, heads=6, kv_heads=2, intermediate=1024, vocab=8192),
}
WORKLOAD = dict(paths=8, k=4, new_tokens=32, score_steps=4)


def rates(spec: ModelSpec, kernel: str, inputs, sizes: Sizes) -> tuple[float, float]:
    """(teacher tokens/s, scorer tokens/s) with the backends' model loaded with `kernel`."""
    questions, solutions, _ = inputs
    teacher, scorer = TransformersTeacher(spec), TransformersScorer(spec)
    teacher.model = scorer.model = load_model(spec, attn_implementation=kernel)  # the kernel under test
    return teacher_rate(teacher, questions, sizes), scorer_run(scorer, questions, solutions, sizes)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| model | kernel | teacher tok/s | scorer tok/s |\n|---|---|---|---|")
    summary = []
    for name, shape in SHAPES.items():
        sizes = dataclasses.replace(shape, **WORKLOAD)
        inputs = demo_inputs(sizes)
        with tempfile.TemporaryDirectory(prefix="attention-speed-") as tmp:
            path, _ = build_model(Path(tmp) / "model", sizes, inputs[2])
            spec = ModelSpec(str(path), device=args.device)
            runs = {"eager": [], "sdpa": []}
            for _ in range(args.repeats):
                for kernel in runs:
                    runs[kernel].append(rates(spec, kernel, inputs, sizes))
        median = {k: [statistics.median(r[i] for r in v) for i in range(2)] for k, v in runs.items()}
        for kernel, (t, s) in median.items():
            print(f"| {name} | {kernel} | {t:,.0f} | {s:,.0f} |")
        summary.append(f"{name}: SDPA / eager = {median['sdpa'][0] / median['eager'][0]:.2f}x teacher, "
                       f"{median['sdpa'][1] / median['eager'][1]:.2f}x scorer")
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
