"""The tour (`make demo` = `gen-ssd pipeline` on the demo partition): its run config, what it says
before it runs, and its last table.

The tour is the comparison's seed 0 at a smaller teacher-token budget: every method's trajectories
take the demo's train problems in seed 0's order (`core/experiments/budget.py`, the rule of
`gen-ssd compare`) until `TOUR_BUDGET` teacher tokens are spent, and the cold-start student is
fine-tuned on what each kept. One seed, so its intervals are over test questions only.
"""

from __future__ import annotations

import os
import textwrap

from .core.method.methods import METHODS
from .defs.trajectories import trajectories_asset_name

# Teacher tokens per method, scaled for the tour's time (10 minutes from a fresh clone on a 2-core
# CPU, venv included); `gen-ssd compare` spends 100,000 per arm (docs/comparison.md).
TOUR_BUDGET = 30_000
# How long the tour takes, and where: measured 2026-12-07 (`/usr/bin/time make demo` in a fresh
# clone right after `make venv`, nothing else running).
MEASURED = ("5 min 50 s from a fresh home on 2 CPU cores (Xeon with AVX-512, no GPU), measured 2026-12-07; "
            "peak memory 2.4 GB")


def with_tour_defaults(run_config: dict) -> dict:
    """The tour's budget on every trajectories asset, over the whole train split; what the user's
    run config sets wins."""
    ops = {k: {**(v or {}), "config": dict((v or {}).get("config") or {})} for k, v in run_config.get("ops", {}).items()}
    for method in METHODS:
        config = ops.setdefault(trajectories_asset_name(method), {"config": {}})["config"]
        if "teacher_token_budget" not in config:
            config["teacher_token_budget"] = TOUR_BUDGET
            config.setdefault("max_problems", None)  # the budget, not a count, bounds the data
    return {**run_config, "ops": ops}


def budgets(run_config: dict) -> dict[str, int | None]:
    """method -> the teacher-token budget its trajectories asset runs with (None = no budget)."""
    ops = run_config.get("ops") or {}
    return {m: ((ops.get(trajectories_asset_name(m)) or {}).get("config") or {}).get("teacher_token_budget")
            for m in METHODS}


def header(run_config: dict) -> str:
    """What the tour runs and what one seed can and cannot show: the first lines it prints."""
    spent = set(budgets(run_config).values())
    labels = ", ".join(m.label for m in METHODS.values())
    budget = (f"each gets the same teacher-token budget, {spent.pop():,} tokens (every token the teacher "
              "generated counts: rejected candidates and pruned paths too), taking the demo's train problems in "
              "seed 0's order as `make compare` does" if len(spent) == 1 and None not in spent
              else "budgets as the run config sets them: " + ", ".join(f"{m} {b}" for m, b in budgets(run_config).items()))
    paragraphs = [
        "Runs the whole Dagster asset graph once: the demo teacher and base student (built and trained here), "
        "problems, benchmarks, cold_start_student, pruning_thresholds, the trajectories of each method, one "
        "distilled student per method, evaluation_scores (the demo's test split, greedy).",
        f"Methods: {labels}; {budget}. Each student is the cold-start student fine-tuned on what its method kept.",
        f"Takes {MEASURED}; this machine has {os.cpu_count()} CPU cores.",
        "What one seed shows: each score's 95% interval and each paired difference are over test questions, with "
        "the trained students held fixed. It is not an interval over training runs: 3 seeds at this budget gave "
        "Gen-SSD − Standard KD +6.0 ± 1.7 points (2026-12-07), and the demo models built in bf16 instead of float32 "
        "gave −1.8 ± 1.9. `make compare` trains 5 seeds per method at 100,000 teacher tokens each and gives the "
        "interval over seeds and questions (docs/comparison.md).",
    ]
    lines = ["gen-ssd pipeline: the tour of Gen-SSD on the embedded demo world (a synthetic arithmetic task), one seed."]
    for text in paragraphs:
        lines += textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def arms_table(result, store) -> str:
    """The last table: per method, the teacher tokens spent of its budget, the problems and trajectories
    they bought, and its student's accuracy (95% interval) and paired difference from Standard KD on
    the demo test split. `result`: the pipeline run; `store`: its DuckDB store."""
    from .store.scores import latest_scores, paired_differences, score_intervals

    spent = {}
    for event in result.get_asset_materialization_events():
        name = event.asset_key.to_user_string()
        for method in METHODS:
            if name == trajectories_asset_name(method):
                spent[method] = {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
    df = latest_scores(store)
    df = df[df.benchmark == "demo"]
    intervals = score_intervals(store, df)
    diffs = {s: d for s, _, d in paired_differences(store, df)}
    lines = ["| student | teacher tokens spent / budget | problems | trajectories trained on | accuracy % (95%) "
             "| − Standard KD, points (95%) |", "|---|---:|---:|---:|---:|---:|"]
    for student in ("base", "cold_start", *METHODS):
        ci = intervals.get((student, "demo"))
        if ci is None:
            continue
        meta = spent.get(student, {})
        budget = meta.get("teacher_token_budget")
        tokens = f"{meta['teacher_tokens']:,} / {budget:,}" if budget else f"{meta['teacher_tokens']:,}" if meta else "—"
        diff = diffs.get(student)
        verdict = "" if diff is None else (" within noise" if diff.low <= 0 <= diff.high else "")
        lines.append(f"| {METHODS[student].label if student in METHODS else student.replace('_', ' ')} | {tokens} "
                     f"| {meta.get('problems', '—')} | {meta.get('selected', '—')} | {ci.fmt()} | "
                     + ("" if diff is None else f"{100 * diff.estimate:+.1f} ± {100 * (diff.high - diff.estimate):.1f}"
                        f"{verdict}") + " |")
    return "\n".join(lines)
