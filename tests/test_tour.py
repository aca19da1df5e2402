"""The tour (`make demo` = `gen-ssd pipeline` on demo): every method's trajectories at one teacher-token
budget, taken in the seed's order as the comparison takes them, and what the tour prints.

Real tiny random models (conftest); the cold start is skipped, so nothing needs to be correct.
"""

from __future__ import annotations

import pytest

from test_pipeline import SMALL, _materialization, _materialize, _run_config, _store  # tiny_models: conftest

UPSTREAM = ["teacher", "base_student", "problems", "cold_start_student"]


def test_budget_meter_takes_a_prefix_and_closes_at_the_first_problem_that_does_not_fit():
    from gen_ssd_dagster.core.errors import ConfigError
    from gen_ssd_dagster.core.experiments.budget import BudgetMeter

    meter = BudgetMeter(100)
    assert [meter.take(c) for c in (40, 50, 20, 5)] == [True, True, False, False]  # 5 would fit, but after 20
    assert (meter.spent, meter.taken, meter.closed) == (90, 2, True)
    assert BudgetMeter(1000, spent=100, taken=4).problems_left(at_least=2) == 36  # 900 left at 25 per problem
    for bad in (0, -5, True, 2.5):
        with pytest.raises(ConfigError, match="teacher_token_budget"):
            BudgetMeter(bad)


def _budgeted(budget, gen_ssd=None, **limits):
    """The run config of test_pipeline with a teacher-token budget on Gen-SSD's and Standard KD's
    trajectories, over a pool of 12 problems. Gen-SSD prunes: the random student's PPLs are far above
    max_ppl, so every path ends at its first step (at most K chunks of teacher tokens)."""
    rc = _run_config(suitability="absolute", **(gen_ssd or {}))
    rc["ops"]["problems"] = {"config": {"max_problems": 12}}
    for asset in ("gen_ssd_trajectories", "standard_kd_trajectories"):
        rc["ops"][asset]["config"] = {**rc["ops"][asset]["config"], "max_problems": None,  # SMALL stays as it is
                                      "teacher_token_budget": budget, **limits}
    return rc


def test_each_arm_stops_at_the_budget_and_gen_ssd_reaches_more_problems(tmp_path, tiny_models):
    from gen_ssd_dagster.core.experiments.budget import seed_order
    from gen_ssd_dagster.store.trajectories import WorkKey, problem_costs, read_problems, selected_examples

    teacher, student = tiny_models
    home = tmp_path / "home"
    budget = 150  # Standard KD: 2 samples of up to 24 tokens per problem, so a few of the 12
    assets = ["gen_ssd_trajectories", "standard_kd_trajectories"]
    result = _materialize(home, teacher, student, "demo", UPSTREAM + assets, _budgeted(budget))
    assert result.success
    store = _store(home)
    stream = [p.problem_id for p in seed_order(read_problems(store, "demo", "train"), 0)]
    taken = {}
    for asset in assets:
        md = _materialization(result, asset).metadata
        key = WorkKey(**{f: md[f].value for f in ("dataset", "method", "teacher_version", "student_version",
                                                  "config_hash", "method_version", "budget_problems")})
        costs = problem_costs(store, key)
        chosen = list(key.budget_problems)
        # the budget's problems are the seed's stream from its start, and the next one would not fit
        assert chosen == stream[:len(chosen)]
        assert md["teacher_tokens"].value == sum(costs[p] for p in chosen) <= budget == md["teacher_token_budget"].value
        assert md["budget_pool_exhausted"].value is False
        assert md["teacher_tokens"].value + costs[stream[len(chosen)]] > budget
        assert md["problems"].value == len(chosen)
        if key.method == "standard_kd":  # it stopped: a slice past the budget at most, not the whole pool
            assert len(costs) < len(stream)
        assert {pid for pid, _, _ in selected_examples(store, key)} <= set(chosen)
        taken[key.method] = len(chosen)
    assert taken["gen_ssd"] > taken["standard_kd"] >= 1, taken

    # A larger budget over the same stored work: the stored problems are counted, not generated again.
    again = _materialize(home, teacher, student, "demo", ["standard_kd_trajectories"], _budgeted(10**9))
    md = _materialization(again, "standard_kd_trajectories").metadata
    assert md["budget_pool_exhausted"].value is True and md["problems"].value == 12
    assert md["reused_problems"].value >= taken["standard_kd"]


def test_a_budget_refuses_a_sharded_partition():
    """A shard holds part of the stream, so no prefix of the whole stream: said before any model loads."""
    from gen_ssd_dagster.core.errors import ConfigError
    from gen_ssd_dagster.defs.trajectories import generate
    from gen_ssd_dagster.run_config.asset_configs import StandardKDTrajectoriesConfig

    config = StandardKDTrajectoriesConfig(**SMALL, teacher_token_budget=100)
    with pytest.raises(ConfigError, match="teacher_token_budget.*GEN_SSD_SHARDS=2"):
        generate(None, "standard_kd", config, None, None, None, None, "demo", shard=(0, 2))


def test_the_tour_says_what_it_runs_and_what_one_seed_shows():
    from gen_ssd_dagster import tour

    rc = tour.with_tour_defaults({"ops": {"posthoc_trajectories": {"config": {"teacher_token_budget": 5}},
                                          "standard_kd_trajectories": {"config": {"max_problems": 50}}}})
    assert tour.budgets(rc) == {"gen_ssd": tour.TOUR_BUDGET, "standard_kd": tour.TOUR_BUDGET, "posthoc": 5}
    assert rc["ops"]["gen_ssd_trajectories"]["config"]["max_problems"] is None  # the budget bounds the data
    assert rc["ops"]["standard_kd_trajectories"]["config"]["max_problems"] == 50  # the user's setting wins
    text = tour.header(tour.with_tour_defaults({}))
    first = text.splitlines()[0]
    assert first.startswith("gen-ssd pipeline: the tour") and "one seed" in first
    for said in ("Gen-SSD, Standard KD, post-hoc filtering", f"{tour.TOUR_BUDGET:,} tokens", "seed 0's order",
                 "evaluation_scores", tour.MEASURED, "not an interval over training runs", "`make compare`"):
        assert said in " ".join(text.split()), said  # wrapped at 100 columns
    assert max(map(len, text.splitlines())) <= 110
    assert "budgets as the run config sets them" in tour.header(rc)


def test_gen_ssd_pipeline_prints_the_header_first_and_the_arms_last(tmp_path, tiny_models, capsys):
    """`gen-ssd pipeline` on the tiny models: the header before anything runs, the arms table at
    the end (the distilled students fail here: the random models are never right)."""
    import yaml

    from conftest import data_dir
    from gen_ssd_dagster import cli, tour

    teacher, student = tiny_models
    rc = _budgeted(150)
    rc["resources"] = {"models": {"teacher": str(teacher), "student": str(student)},
                       "data": {"demo_train": 12, "demo_test": 4, "data_dir": str(data_dir())}}
    rc["ops"]["pruning_thresholds"] = {"config": {"max_problems": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(rc))
    code = cli.main(["--home", str(tmp_path / "home"), "pipeline", "--config", str(tmp_path / "run.yaml")])
    out = capsys.readouterr().out
    assert code == 1  # nothing was learnable, as said
    assert out.startswith(tour.header(tour.with_tour_defaults(rc)).splitlines()[0])
    assert "The tour's arms" in out and "| student | teacher tokens spent / budget |" in out


def test_the_arms_table_gives_spend_accuracy_and_the_paired_difference(tmp_path):
    """The last table from stored scores and graded answers, and the run's trajectories metadata."""
    import types

    from gen_ssd_dagster import tour
    from gen_ssd_dagster.core.types import Problem
    from gen_ssd_dagster.store import Store
    from gen_ssd_dagster.store.eval_outputs import EvalLedger
    from gen_ssd_dagster.store.scores import EvaluationScore, write_scores

    store = Store(tmp_path / "gen_ssd.duckdb")
    problems = [Problem("demo", f"q{i}", "1+1?", "2") for i in range(40)]
    right = {"standard_kd": 10, "gen_ssd": 30}  # questions answered right, of 40
    for student, n_right in right.items():
        EvalLedger(store, f"{student}@v", "demo", "g1", "h").record(problems, [
            {"problem_id": p.problem_id, "completion": "", "predicted": "2" if i < n_right else "3", "gold": "2",
             "correct": i < n_right} for i, p in enumerate(problems)])
        write_scores(store, [EvaluationScore(student, f"{student}@v", "demo", 40, n_right, n_right / 40, "g1", "h")])

    def materialization(method, tokens, problems_taken, selected):
        metadata = {k: types.SimpleNamespace(value=v) for k, v in dict(
            teacher_tokens=tokens, teacher_token_budget=1000, problems=problems_taken, selected=selected).items()}
        return types.SimpleNamespace(asset_key=types.SimpleNamespace(to_user_string=lambda: f"{method}_trajectories"),
                                     step_materialization_data=types.SimpleNamespace(
                                         materialization=types.SimpleNamespace(metadata=metadata)))

    result = types.SimpleNamespace(get_asset_materialization_events=lambda: [
        materialization("standard_kd", 990, 12, 15), materialization("gen_ssd", 998, 21, 16)])
    lines = tour.arms_table(result, store).splitlines()
    kd, gen = (next(line for line in lines if line.startswith(f"| {label} |")) for label in ("Standard KD", "Gen-SSD"))
    assert kd.startswith("| Standard KD | 990 / 1,000 | 12 | 15 | 25.0 ± ") and kd.endswith("|  |")
    assert gen.startswith("| Gen-SSD | 998 / 1,000 | 21 | 16 | 75.0 ± ") and "| +50.0 ± " in gen
    assert "within noise" not in gen
