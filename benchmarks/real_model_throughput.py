"""Teacher and student-scorer throughput of Gen-SSD on a real pretrained model, through its template.

SmolLM2-135M-Instruct (PyPI, GGUF) is teacher and student scorer, on real GSM8K test problems,
with the \\boxed{} instruction. One run measures, on the transformers backends:

* plain sampling: K full teacher samples per problem, batched (the baseline);
* Gen-SSD: the same K, chunked, the student scoring every candidate; the time is split between
  the teacher's `propose` and the student's `score` by timing the two sessions.

It prints teacher tokens/s of both, Gen-SSD's ÷ plain sampling's, and student-scored tokens/s.

    GEN_SSD_DATA_DIR=<dir with gsm8k/> .venv/bin/python benchmarks/real_model_throughput.py --problems 8
"""

from __future__ import annotations

import argparse
import os
import time

from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
from gen_ssd_dagster.core.data.benchmarks import BUILTIN_DATASETS, load_problems
from gen_ssd_dagster.core.engines.models import packaged_smollm2
from gen_ssd_dagster.core.method.selection import run_gen_ssd
from metering import MeteredScorer, MeteredTeacher  # benchmarks/metering.py, beside this script

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=48)
    parser.add_argument("--max-new", type=int, default=256)
    parser.add_argument("--data-dir", default=os.environ.get("GEN_SSD_DATA_DIR"))
    args = parser.parse_args()

    problems = load_problems(BUILTIN_DATASETS["gsm8k"]["test"], data_dir=args.data_dir, limit=args.problems)
    spec = packaged_smollm2(instruction=INSTRUCTION)
    teacher, scorer = TransformersTeacher(spec), TransformersScorer(spec)
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new, seed=0)

    started = time.perf_counter()
    session = teacher.start([p.question for p in problems], sampling.temperature, sampling.top_p, sampling.seed)
    plain = session.propose(args.k, [args.max_new] * len(problems), stop_at_newline=False)
    plain_s = time.perf_counter() - started
    plain_tokens = sum(c.tokens for row in plain for c in row)

    timed_teacher, timed_scorer = MeteredTeacher(teacher), MeteredScorer(scorer)
    config = GenSSDConfig(chunk_tokens=args.chunk, num_candidates=args.k, sampling=sampling)
    started = time.perf_counter()
    trajectories = run_gen_ssd(problems, timed_teacher, timed_scorer, config, batch_size=len(problems))
    total_s = time.perf_counter() - started
    teacher_meter, scorer_meter = timed_teacher.meter, timed_scorer.meter

    ends = {r: sum(t.end_reason == r for t in trajectories) for r in ("finished", "pruned", "length_cap")}
    print(f"SmolLM2-135M-Instruct, {len(problems)} GSM8K problems, K={args.k}, chunk {args.chunk}, "
          f"cap {args.max_new}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"plain sampling : {plain_tokens:6d} teacher tokens in {plain_s:6.1f}s = {plain_tokens / plain_s:6.1f} tok/s")
    print(f"Gen-SSD teacher: {teacher_meter.tokens:6d} teacher tokens in {teacher_meter.seconds:6.1f}s = "
          f"{teacher_meter.tokens / teacher_meter.seconds:6.1f} tok/s "
          f"({teacher_meter.tokens / teacher_meter.seconds / (plain_tokens / plain_s):.2f}x plain sampling)")
    print(f"Gen-SSD student: {scorer_meter.tokens:6d} student tokens scored in {scorer_meter.seconds:6.1f}s = "
          f"{scorer_meter.tokens / scorer_meter.seconds:6.1f} tok/s")
    print(f"Gen-SSD whole  : {total_s:.1f}s; trajectories {ends}; "
          f"{sum(t.teacher_tokens for t in trajectories) / total_s:.1f} teacher tok/s end to end")


if __name__ == "__main__":
    main()
