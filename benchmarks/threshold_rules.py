"""Each threshold rule's max_ppl, ppl_ratio and prune rate on one world (docs/thresholds.md).

    python benchmarks/threshold_rules.py HOME CONFIG [--partition demo] [--problems 64]
        [--rules teacher_quantile,mode_split,median_multiple] [--prune-final-chunk]

Cheap next to a comparison: the config's teacher and cold start (built once per HOME), then per
rule `pruning_thresholds` (64 held-back problems) and `gen_ssd_trajectories` with `thresholds:
calibrated` on the first --problems problems after the cold start's. No training, no evaluation.
Prints one row per rule. For SmolLM2-135M: CONFIG configs/smollm2_gsm8k.yaml, --partition gsm8k,
GEN_SSD_DATA_DIR set.
"""

import argparse
import json
import os
import time

from gen_ssd_dagster.core.method.threshold_rules import CALIBRATED_RULES
from gen_ssd_dagster.defs.resources import DataResource
from gen_ssd_dagster.pipeline import load_config, run_pipeline
from gen_ssd_dagster.store import Home, Store

UPSTREAM = ["teacher", "base_student", "problems", "cold_start_student"]


def rule_of(config: dict) -> str | None:
    calibration = config.get("calibration")
    return calibration.get("rule", "teacher_quantile") if calibration else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("home")
    parser.add_argument("config")
    parser.add_argument("--partition", default="demo")
    parser.add_argument("--problems", type=int, default=64, help="problems Gen-SSD runs per rule")
    parser.add_argument("--rules", default=",".join(CALIBRATED_RULES))
    parser.add_argument("--prune-final-chunk", action="store_true", help="default: exempt, as the rules were compared")
    args = parser.parse_args()
    rules = [r for r in args.rules.split(",") if r]
    home = Home.resolve(args.home)
    rc, overrides = load_config(args.config)
    if "GEN_SSD_DATA_DIR" in os.environ:
        overrides["data"] = DataResource(data_dir=os.environ["GEN_SSD_DATA_DIR"])
    ops = rc.setdefault("ops", {})
    for name in ("method_comparison", "gen_ssd_knob_sweep"):
        ops.pop(name, None)  # the experiments' hand-set thresholds are what the rules replace
    gen = ops.setdefault("gen_ssd_trajectories", {}).setdefault("config", {})
    gen.update(thresholds="calibrated", max_problems=args.problems, prune_final_chunk=args.prune_final_chunk)
    started = time.perf_counter()
    assert run_pipeline(home, args.partition, rc, overrides, selection=UPSTREAM).success
    print(f"teacher and cold start ready after {time.perf_counter() - started:.0f}s", flush=True)
    facts = {}
    for rule in rules:
        ops.setdefault("pruning_thresholds", {}).setdefault("config", {})["rule"] = rule
        clock = time.perf_counter()
        result = run_pipeline(home, args.partition, rc, overrides, selection=["pruning_thresholds", "gen_ssd_trajectories"])
        assert result.success
        meta = next(e.step_materialization_data.materialization.metadata for e in result.get_asset_materialization_events()
                    if e.asset_key.to_user_string() == "pruning_thresholds")
        facts[rule] = {k: meta[k].value for k in ("first_line_ppl_median", "later_line_ratio_median")}
        print(f"{rule}: {time.perf_counter() - clock:.0f}s", flush=True)
    rows = Store(home.db_path).query("""
        SELECT config, count(*), count(*) FILTER (WHERE end_reason = 'pruned'),
            count(*) FILTER (WHERE end_reason = 'finished'), count(*) FILTER (WHERE correct),
            avg(student_tokens), sum(teacher_tokens)
        FROM trajectories WHERE method = 'gen_ssd' AND dataset = ? GROUP BY config""", [args.partition])
    print(f"\n{args.config}, {args.partition}, prune_final_chunk {args.prune_final_chunk}; "
          f"{time.perf_counter() - started:.0f}s in all\n")
    print("| rule | max_ppl | ppl_ratio | first-line PPL median | later-line ratio median | paths | pruned % "
          "| finished | correct | length | teacher tokens / correct |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in sorted(rows, key=lambda r: rules.index(rule_of(json.loads(r[0]))) if rule_of(json.loads(r[0])) in rules
                      else len(rules)):
        config = json.loads(row[0])
        rule = rule_of(config)
        if rule not in rules or config.get("prune_final_chunk", True) != args.prune_final_chunk:
            continue
        n, pruned, finished, correct, length, tokens = row[1:]
        per = f"{tokens / correct:.0f}" if correct else "—"
        print(f"| {rule} | {config['max_ppl']:.2f} | {config['ppl_ratio']:.2f} | {facts[rule]['first_line_ppl_median']}"
              f" | {facts[rule]['later_line_ratio_median']} | {n} | {100 * pruned / n:.0f} | {finished} | {correct}"
              f" | {length:.0f} | {per} |")


if __name__ == "__main__":
    main()
