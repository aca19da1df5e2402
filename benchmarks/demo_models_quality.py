"""Build the demo models and measure them: build time, teacher greedy accuracy, sampled style mix.

    .venv/bin/python benchmarks/demo_models_quality.py /tmp/demo_models [--problems 100 --samples 20]
    .venv/bin/python benchmarks/demo_models_quality.py /tmp/reasoning --style-weights 0.25,0,0,0.75

A second run on the same directory reuses the built models (build time then shows 0.0 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import collections
import json
import logging
import os
import random
import time
from pathlib import Path

import torch

from gen_ssd_dagster.core.demo.models import MARKER, DemoModelsConfig, build_demo_models
from gen_ssd_dagster.core.demo.world import classify_style, generate_problems
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer
from gen_ssd_dagster.core.data.grading import extract_gsm8k
from gen_ssd_dagster.core.engines.prompts import format_prompt


def generate(model, tokenizer, questions: list[str], sample: bool, batch: int = 25) -> list[str]:
    tokenizer.padding_side = "left"  # decoder-only batches continue from the right edge
    out = []
    for i in range(0, len(questions), batch):
        enc = tokenizer([format_prompt(q) for q in questions[i : i + batch]], return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=256, do_sample=sample, temperature=1.0 if sample else None,
                                 top_p=1.0 if sample else None, top_k=0 if sample else None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def correct(text: str, gold: str) -> bool:
    answer = extract_gsm8k(text)
    return answer is not None and answer.strip().lstrip("-").isdigit() and int(answer) == int(gold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=123, help="seed of the fresh test problems")
    ap.add_argument("--style-weights", default=None,
                    help="stepwise,collapsed,verbose,meandering shares of the teacher's data (default: the easy world)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    load = os.getloadavg()[0]
    t = time.perf_counter()
    config = DemoModelsConfig()
    if args.style_weights:
        config = dataclasses.replace(config, style_weights=tuple(float(w) for w in args.style_weights.split(",")))
    built = build_demo_models(args.out_dir, config)
    print(f"build: {built.seconds:.1f} s (wall {time.perf_counter() - t:.1f} s, load avg at start {load:.2f}, "
          f"now {os.getloadavg()[0]:.2f})")
    marker = json.loads((Path(args.out_dir) / MARKER).read_text())
    print(f"tokens seen: teacher {marker.get('teacher_tokens', '?'):,}, student {marker.get('student_tokens', '?'):,} "
          f"(build of {marker['seconds']} s)")

    teacher, tok = load_model(ModelSpec(str(built.teacher))), load_tokenizer(ModelSpec(str(built.teacher)))
    student = load_model(ModelSpec(str(built.student)))
    print(f"params: teacher {teacher.num_parameters():,}, student {student.num_parameters():,}")

    problems = generate_problems(args.problems, args.seed, "test")
    t = time.perf_counter()
    greedy = generate(teacher, tok, [p.question for p in problems], sample=False)
    acc = sum(correct(g, p.gold) for g, p in zip(greedy, problems)) / len(problems)
    greedy_by_style = collections.defaultdict(list)
    for text, p in zip(greedy, problems):
        greedy_by_style[classify_style(text)].append(correct(text, p.gold))
    styles = ", ".join(f"{s} {len(v)} ({sum(v)} correct)" for s, v in sorted(greedy_by_style.items()))
    print(f"teacher greedy accuracy: {acc:.1%} on {len(problems)} test problems "
          f"({time.perf_counter() - t:.1f} s; styles: {styles})")

    torch.manual_seed(0)
    picked = random.Random(0).sample(problems, min(args.samples, len(problems)))
    sampled = generate(teacher, tok, [p.question for p in picked], sample=True)
    by_style = collections.defaultdict(list)
    for text, p in zip(sampled, picked):
        by_style[classify_style(text)].append(correct(text, p.gold))
    mix = ", ".join(f"{s} {len(v)} ({sum(v)} correct)" for s, v in sorted(by_style.items()))
    n_right = sum(sum(v) for v in by_style.values())
    print(f"sampled (T=1.0) style mix of {len(picked)}: {mix}; {n_right / len(picked):.0%} correct")
    for style, text in {classify_style(s): s for s in sampled}.items():
        print(f"--- example {style}:\n{text}")


if __name__ == "__main__":
    main()
