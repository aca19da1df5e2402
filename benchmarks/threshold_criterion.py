"""docs/thresholds.md's criterion, as code, over the stored comparisons of a home: prints each
rule's score and the picked rule (final-chunk-exempt comparisons with at least NEED seeds).

    python benchmarks/threshold_criterion.py HOME [NEED]      (after benchmarks/threshold_pick.sh)

Score: Gen-SSD − Standard KD, paired, mean over seeds and questions. Best score wins; a score within
1.0 point of the best ties; among tied rules fewer teacher tokens per kept trajectory wins, unless
those differ by less than 5%, when the lower prune rate does.
"""

from __future__ import annotations

import sys

from gen_ssd_dagster.core.experiments.comparison_table import paired_differences, summarise
from gen_ssd_dagster.store import Store
from gen_ssd_dagster.store.experiments import experiment_arms
from gen_ssd_dagster.store.home import Home

TIE, TOKENS_CLOSE = 0.01, 1.05  # 1.0 point (accuracies are fractions); 5%


def main() -> None:
    store = Store(Home.resolve(sys.argv[1]).db_path)
    need = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    names = [r[0] for r in store.query("SELECT DISTINCT experiment FROM experiment_arms WHERE kind = 'comparison'")]
    scores = {}
    for name in names:
        arms = experiment_arms(store, name)
        gen = [a for a in arms if a.label == "gen_ssd"]
        if not gen or gen[0].config.get("prune_final_chunk", True) or not gen[0].config.get("calibration"):
            continue
        rule = gen[0].config["calibration"].get("rule", "teacher_quantile")
        diff = {r["label"]: r for r in paired_differences(arms)}.get("gen_ssd")
        row = {r["label"]: r for r in summarise(arms)}["gen_ssd"]
        if diff is None or diff["n_seeds"] < need:
            continue
        scores[rule] = (diff["estimate"], row["tokens_per_accepted"].mean, row["prune"].mean, diff["low95"])
    if not scores:
        sys.exit(f"no final-chunk-exempt comparison with {need} seeds and a threshold rule in {sys.argv[1]}")
    for rule, (score, tokens, prune, low) in scores.items():
        print(f"{rule}: score {100 * score:+.2f}, tokens/kept {tokens:.0f}, pruned {100 * prune:.0f}%, "
              f"low95 {100 * low:+.2f}")
    best = max(v[0] for v in scores.values())
    tied = sorted((r for r, v in scores.items() if v[0] >= best - TIE), key=lambda r: scores[r][1])
    close = [r for r in tied if scores[r][1] < TOKENS_CLOSE * scores[tied[0]][1]]
    pick = sorted(close, key=lambda r: scores[r][2])[0] if len(close) > 1 else tied[0]
    print(f"picked: {pick} (default changes only if its low95 > 0: {scores[pick][3] > 0})")


if __name__ == "__main__":
    main()
