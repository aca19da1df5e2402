"""Asset checks: what must hold of stored trajectories and of the final scores."""


import dagster as dg

from ..store.scores import latest_scores
from .resources import StoreResource


def no_duplicates(summary: dict, asset: str) -> dg.AssetCheckResult:
    """No two stored trajectories share (problem, sample index) under one key."""
    return dg.AssetCheckResult(
        check_name="no_duplicate_trajectories", asset_key=asset, passed=summary["duplicates"] == 0,
        metadata={"duplicates": summary["duplicates"], "trajectories": summary["trajectories"]})


def acceptance_not_zero(summary: dict, asset: str) -> dg.AssetCheckResult:
    """Some trajectory finished: a zero rate means every path was pruned or capped (bad knobs)."""
    empty = summary["trajectories"] == 0
    return dg.AssetCheckResult(
        check_name="acceptance_rate_not_zero", asset_key=asset,
        passed=empty or summary["acceptance_rate"] > 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no trajectories in this partition" if empty else None,
        metadata={"acceptance_rate": float(summary["acceptance_rate"]), "finished": summary["finished"],
                  "pruned": summary["pruned"], "length_capped": summary["length_capped"]})


@dg.asset_check(asset="evaluation_scores", description="On the demo benchmark, the student distilled with "
                "Gen-SSD scores at least as well as the cold-start student it was fine-tuned from.")
def gen_ssd_not_worse_than_cold_start(store: StoreResource) -> dg.AssetCheckResult:
    df = latest_scores(store.store())
    demo = df[df.benchmark == "demo"].set_index("student")["accuracy"].to_dict()
    if "gen_ssd" not in demo or "cold_start" not in demo:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                   description="no demo scores for gen_ssd and cold_start yet")
    return dg.AssetCheckResult(passed=bool(demo["gen_ssd"] >= demo["cold_start"]),
                               metadata={"gen_ssd": float(demo["gen_ssd"]), "cold_start": float(demo["cold_start"])})
