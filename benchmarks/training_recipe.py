"""Which distillation recipe makes Gen-SSD - Standard KD depend on the data and not the example order?

The criterion and the candidates are in docs/training-recipe.md (written before this ran). One
comparison seed's data of the easy (default demo) world, generated once: the demo models, the
cold start of `make demo`, then Gen-SSD's and Standard KD's trajectories from seed 0's problem
stream at the comparison's budget (`generate_within_budget`, as `make compare` does). Then for
each candidate recipe, both arms are fine-tuned from the cold start under each shuffle order and
scored greedily on the same test questions. The baseline (today's recipe) runs in the same run.

Everything is kept under --work: the world and the data are built once, and every finished
(candidate, order, arm) is appended to results.jsonl, so a rerun only trains what is missing.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/training_recipe.py --work /tmp/recipe [--n-test 500]
        [--candidates today,lr1e-3,...] [--orders 0,100,200] [--prepare-only]
        [--threads 1 --worker K]   # start several with distinct K: they share the runs; --summary-only prints the table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch

from gen_ssd_dagster.core.data.benchmarks import BUILTIN_DATASETS, load_problems
from gen_ssd_dagster.core.demo.models import build_demo_models
from gen_ssd_dagster.core.demo.run import DemoConfig
from gen_ssd_dagster.core.demo.world import write_demo_dataset
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.evaluation.evaluate import evaluate
from gen_ssd_dagster.core.evaluation.statistics import variance_components
from gen_ssd_dagster.core.experiments.comparison import (DISTILL_TRAIN, ComparisonConfig, generate_within_budget,
                                                         seed_order, with_seed)
from gen_ssd_dagster.core.method.registry import run_method, training_examples
from gen_ssd_dagster.core.training.sft import fine_tune

TODAY = dataclasses.replace(DISTILL_TRAIN, learning_rate=3e-3, lr_schedule="cosine", min_lr_ratio=0.1, ema_decay=0.0)
CANDIDATES = {  # docs/training-recipe.md, in its order
    "today": TODAY,
    "lr1e-3": dataclasses.replace(TODAY, learning_rate=1e-3),
    "cosine-to-0": dataclasses.replace(TODAY, min_lr_ratio=0.0),
    "linear-to-0": dataclasses.replace(TODAY, lr_schedule="linear", min_lr_ratio=0.0),
    "ema": dataclasses.replace(TODAY, ema_decay=0.99),
    "lr1e-3+ema": dataclasses.replace(TODAY, learning_rate=1e-3, ema_decay=0.99),
}
ARMS = ("gen_ssd", "standard_kd")
DATA_SEED = 0  # the comparison seed whose data every candidate trains on


def prepare(work: Path, log) -> tuple[ModelSpec, dict[str, list], list]:
    """The demo world, its cold start and seed 0's data of both arms, built once under `work`."""
    demo = DemoConfig()
    data_dir = work / "data"
    write_demo_dataset(data_dir, demo.n_train, demo.n_test, demo.seed)
    train = load_problems(BUILTIN_DATASETS["demo"]["train"], data_dir=data_dir)
    test = load_problems(BUILTIN_DATASETS["demo"]["test"], data_dir=data_dir)
    models = build_demo_models(work / "models", demo.models)
    cold_dir = work / "cold_start"
    if not (cold_dir / "config.json").exists():
        clock = time.perf_counter()
        base_scorer = TransformersScorer(ModelSpec(str(models.student)))
        teacher = TransformersTeacher(ModelSpec(str(models.teacher)))
        cold_data = training_examples(run_method(demo.cold_start, train[: demo.n_cold_start], teacher, base_scorer))
        fine_tune(ModelSpec(str(models.student)), cold_data, cold_dir, demo.cold_start_train)
        log(f"cold start: {len(cold_data)} examples, {time.perf_counter() - clock:.0f} s")
    cold = ModelSpec(str(cold_dir))
    data_file = work / f"examples_seed{DATA_SEED}.json"
    if not data_file.exists():
        teacher, scorer = TransformersTeacher(ModelSpec(str(models.teacher))), TransformersScorer(cold)
        stream, comparison = seed_order(train[demo.n_cold_start:], DATA_SEED), ComparisonConfig()
        examples = {}
        for arm, config in (("gen_ssd", demo.gen_ssd), ("standard_kd", demo.standard_kd)):
            data = generate_within_budget(with_seed(config, DATA_SEED), stream, teacher, scorer,
                                          comparison.teacher_token_budget, comparison.batch_size, log)
            examples[arm] = training_examples(data.trajectories)
            log(f"{arm}: {len(examples[arm])} examples from {data.problems} problems, {data.teacher_tokens} "
                f"teacher tokens, {data.seconds:.0f} s")
        tmp = data_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(examples))
        tmp.replace(data_file)
    return cold, json.loads(data_file.read_text()), test


def run_one(work: Path, cold: ModelSpec, examples: list, test: list, name: str, order: int, arm: str) -> dict:
    config = dataclasses.replace(CANDIDATES[name], seed=order)
    trained = fine_tune(cold, examples, work / "students" / f"{name}-{order}-{arm}", config)
    clock = time.perf_counter()
    result = evaluate(trained.spec, test, solution_end=DemoConfig().gen_ssd.sampling.end_rule)
    return {"candidate": name, "order": order, "arm": arm, "accuracy": result.accuracy, "steps": trained.steps,
            "train_seconds": trained.seconds, "eval_seconds": time.perf_counter() - clock,
            "graded": {o["problem_id"]: bool(o["correct"]) for o in result.outputs}}


def summarize(rows: list[dict], names: list[str], orders: list[int]) -> None:
    """Per candidate: each arm's accuracy, the paired difference per order, its mean and sd over orders,
    and what 5 comparison seeds would give if a seed's spread were this order spread."""
    print(f"\n{'candidate':<12} {'KD acc':>12} {'Gen-SSD acc':>12} {'d per order':>22} {'mean d':>7} {'sd d':>6} "
          f"{'train s':>8} {'5-seed ±':>9}")
    base_sd = None
    for name in names:
        got = {(r["order"], r["arm"]): r for r in rows if r["candidate"] == name}
        done = [o for o in orders if all((o, a) in got for a in ARMS)]
        if len(done) < 2:
            print(f"{name:<12} {len(done)} of {len(orders)} orders done")
            continue
        acc = {a: [100 * got[o, a]["accuracy"] for o in done] for a in ARMS}
        d = [g - k for g, k in zip(acc["gen_ssd"], acc["standard_kd"])]
        records = {a: [{"seed": o, "question_id": q, "correct": c} for o in done for q, c in got[o, a]["graded"].items()]
                   for a in ARMS}
        vc = variance_components(records["gen_ssd"], records["standard_kd"])
        # 5 seeds x the 1,000 default test questions, taking a seed's training part to be this order spread
        # (evaluation.md: a seed's data added nothing measurable beyond the order) and the question
        # part scaled from these vc.n_questions questions to 1,000.
        half = 1.96 * 100 * math.sqrt(vc.seed_var / 5 + vc.question_var * vc.n_questions / 1000)
        sd = statistics.stdev(d)
        base_sd = sd if name == "today" else base_sd
        seconds = statistics.fmean(got[o, a]["train_seconds"] for o in done for a in ARMS)
        fmt = lambda xs: f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f}"  # noqa: E731
        print(f"{name:<12} {fmt(acc['standard_kd']):>12} {fmt(acc['gen_ssd']):>12} "
              f"{' '.join(f'{x:+.1f}' for x in d):>22} {statistics.fmean(d):>+7.1f} {sd:>6.1f} {seconds:>8.0f} "
              f"{half:>9.1f}" + (f"   sd/today {sd / base_sd:.2f}" if base_sd and name != "today" else ""))
    print("(acc: mean ± sd over orders, %; d: Gen-SSD - Standard KD, points; 5-seed ±: estimated 95% half-width "
          "of make compare's 5 seeds x 1,000 questions)")


def claim(path: Path) -> bool:
    """True for the one worker that creates `path` (remove the claims directory to retry killed runs)."""
    try:
        path.open("x").close()
        return True
    except FileExistsError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n-test", type=int, default=500, help="first N demo test questions")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--orders", default="0,100,200", help="training shuffle seeds")
    parser.add_argument("--prepare-only", action="store_true")
    # 1 thread: on a loaded machine two OpenMP threads that wait on each other were ~10x slower.
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--worker", type=int, default=0, help="this process's number (names its results file)")
    parser.add_argument("--summary-only", action="store_true", help="print the table of the finished runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s", datefmt="%H:%M:%S")
    names, orders = args.candidates.split(","), [int(x) for x in args.orders.split(",")]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"--candidates: unknown {unknown}; known: {', '.join(CANDIDATES)}")
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    args.work.mkdir(parents=True, exist_ok=True)
    cold, examples, test = prepare(args.work, log)
    test = test[: args.n_test]
    log(f"data: {', '.join(f'{a} {len(examples[a])} examples' for a in ARMS)}; {len(test)} test questions")
    if args.prepare_only:
        return
    # One results file per worker (whole lines never interleave); every worker's are read back.
    files = sorted(args.work.glob(f"results_n{len(test)}_w*.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    done = {(r["candidate"], r["order"], r["arm"]) for r in rows}
    # Order-major: every candidate gets its first orders before any gets its third, so a cut-short run
    # still compares them all. Workers claim runs through files, so any number of them share the list.
    claims = args.work / "claims"
    claims.mkdir(exist_ok=True)
    jobs = [(name, order, arm) for order in orders for name in names for arm in ARMS]
    results = args.work / f"results_n{len(test)}_w{args.worker}.jsonl"
    for name, order, arm in ([] if args.summary_only else jobs):
        if (name, order, arm) in done or not claim(claims / f"n{len(test)}-{name}-{order}-{arm}"):
            continue
        row = run_one(args.work, cold, examples[arm], test, name, order, arm)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        log(f"{name} order {order} {arm}: accuracy {100 * row['accuracy']:.1f}% ({row['steps']} steps, "
            f"train {row['train_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s)")
    summarize(rows, names, orders)


if __name__ == "__main__":
    main()
