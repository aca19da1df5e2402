"""How fast is the Gen-SSD loop, and what does pruning save?

Measured in one run, on the demo teacher and the demo student after a small cold start:
  1. batched Gen-SSD (paths x candidates in one batch, KV cache kept across steps)
     vs a naive loop (one problem, one candidate at a time, prefix re-encoded every step);
  2. Gen-SSD teacher tokens/s vs plain batched teacher sampling (no scoring, no chunking);
  3. teacher tokens spent per accepted (finished, correct) trajectory, pruning on vs off.
Targets: batched >= 5x naive; Gen-SSD >= 0.5x plain sampling.

    .venv/bin/python benchmarks/selection_speed.py [--home DIR] [--problems 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig, StandardKDConfig
from gen_ssd_dagster.core.demo.models import build_demo_models
from gen_ssd_dagster.core.demo.world import generate_problems
from gen_ssd_dagster.core.method.registry import run_method, training_examples
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.engines.prompts import format_prompt
from gen_ssd_dagster.core.data.solution_text import ends_with_answer
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune


@torch.no_grad()
def naive_gen_ssd(problems, teacher: TransformersTeacher, scorer: TransformersScorer, config: GenSSDConfig) -> int:
    """The loop as one would first write it: per problem, per candidate, re-encoding everything."""
    t_tok, s_tok, s_model = teacher.tokenizer, scorer.tokenizer, scorer.model
    s = config.sampling
    tokens = 0
    torch.manual_seed(s.seed)
    for problem in problems:
        prompt, text, accepted = format_prompt(problem.question), "", 0
        while accepted < s.max_new_tokens:
            candidates = []
            for _ in range(config.num_candidates):
                ids = t_tok(prompt + text, return_tensors="pt")["input_ids"]
                out = teacher.model.generate(
                    ids, max_new_tokens=min(config.chunk_tokens, s.max_new_tokens - accepted), do_sample=True,
                    temperature=s.temperature, top_p=s.top_p, stop_strings="\n", tokenizer=t_tok,
                    pad_token_id=t_tok.pad_token_id,
                )
                new = out[0, ids.shape[1]:]
                tokens += len(new)
                ended = bool((new == t_tok.eos_token_id).any())
                chunk = t_tok.decode(new, skip_special_tokens=True)
                full = s_tok(prompt + text + chunk, return_tensors="pt")["input_ids"]
                n_prefix = len(s_tok(prompt + text)["input_ids"])
                logits = s_model(input_ids=full).logits[0, :-1].float()
                nll = -torch.log_softmax(logits, -1).gather(1, full[0, 1:, None])[n_prefix - 1:].sum()
                candidates.append((float(nll) / max(1, full.shape[1] - n_prefix), chunk, len(new), ended))
            ppl, chunk, n, ended = min(candidates)
            text, accepted = text + chunk, accepted + n
            if ended or ends_with_answer(text):
                break
    return tokens


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=".gen_ssd_home/benchmark", help="where the demo models are built/cached")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--naive-problems", type=int, default=8, help="the naive loop is slow: fewer problems")
    parser.add_argument("--cold-start-problems", type=int, default=64, help="teacher samples that teach the student the format")
    args = parser.parse_args()
    torch.set_num_threads(2)

    models = build_demo_models(Path(args.home) / "models")
    teacher = TransformersTeacher(ModelSpec(str(models.teacher)))
    # Pruning only means something once the student knows the format: a quick cold start first.
    cold_problems = generate_problems(args.cold_start_problems, seed=7, split="train")
    base = TransformersScorer(ModelSpec(str(models.student)))
    kd = StandardKDConfig(num_candidates=2, sampling=SamplingConfig(temperature=0.8))
    examples = training_examples(run_method(kd, cold_problems, teacher, base))
    if not examples:
        raise SystemExit(f"the teacher solved none of {len(cold_problems)} cold-start problems: nothing to learn from")
    cold = fine_tune(models.student, examples, Path(args.home) / "cold_start", TrainConfig(epochs=3, batch_size=16, bf16=True))
    scorer = TransformersScorer(ModelSpec(str(cold.path)))
    problems = generate_problems(args.problems, seed=123, split="test")
    config = GenSSDConfig(suitability="none")

    batched, t_batched = timed(lambda: run_method(config, problems, teacher, scorer, batch_size=len(problems)))
    tok_batched = sum(t.teacher_tokens for t in batched)
    naive_tokens, t_naive = timed(lambda: naive_gen_ssd(problems[: args.naive_problems], teacher, scorer, config))
    tok_plain, session_time = _plain_sampling(problems, teacher, StandardKDConfig().sampling)

    rate = lambda tokens, seconds: tokens / seconds
    print(f"problems={len(problems)}  K={config.num_candidates}  chunk={config.chunk_tokens}  threads=2")
    print(f"batched Gen-SSD : {t_batched:7.1f}s  {rate(tok_batched, t_batched):8.0f} teacher tok/s")
    print(f"naive Gen-SSD   : {t_naive:7.1f}s  {rate(naive_tokens, t_naive):8.0f} teacher tok/s  ({args.naive_problems} problems)")
    print(f"plain sampling  : {session_time:7.1f}s  {rate(tok_plain, session_time):8.0f} teacher tok/s")
    print(f"ratio batched/naive (tok/s)  : {rate(tok_batched, t_batched) / rate(naive_tokens, t_naive):6.1f}x  (target >= 5)")
    print(f"ratio Gen-SSD/plain (tok/s)  : {rate(tok_batched, t_batched) / rate(tok_plain, session_time):6.2f}x  (target >= 0.5)")

    for name, rule in (("pruning on (ratio rule)", GenSSDConfig()), ("pruning off", config)):
        trajectories = run_method(rule, problems, teacher, scorer, batch_size=len(problems))
        kept = sum(bool(t.selected) for t in trajectories)
        spent = sum(t.teacher_tokens for t in trajectories)
        pruned = sum(t.end_reason == "pruned" for t in trajectories)
        per = spent / kept if kept else float("inf")
        print(f"{name:<24}: {spent:6d} teacher tokens, {kept:3d} accepted, {pruned:3d} pruned, {per:7.0f} tokens/accepted")


def _plain_sampling(problems, teacher, sampling: SamplingConfig) -> tuple[int, float]:
    """Teacher tokens and seconds of K=4 full samples per problem, batched, nothing else."""
    prompts = [p.question for p in problems]
    start = time.perf_counter()
    session = teacher.start(prompts, sampling.temperature, sampling.top_p, sampling.seed)
    proposals = session.propose(4, [sampling.max_new_tokens] * len(prompts), stop_at_newline=False)
    return sum(c.tokens for props in proposals for c in props), time.perf_counter() - start


if __name__ == "__main__":
    main()
