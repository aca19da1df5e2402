"""The equal-budget comparison and the knob sweep: budget matching, spreads, and the Dagster assets."""

from __future__ import annotations


import dataclasses
import json

import pytest

from conftest import DEMO_SIZES  # memorizing_teacher, tiny_models: conftest fixtures


def _problems(n: int):
    from gen_ssd_dagster.core.demo.world import generate_problems

    return generate_problems(n, 0, "train")


def _backends(tiny_models):
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
    from gen_ssd_dagster.core.engines.models import ModelSpec

    return TransformersTeacher(ModelSpec(str(tiny_models[0]))), TransformersScorer(ModelSpec(str(tiny_models[1])))


SMALL_SAMPLING = dict(max_new_tokens=24, temperature=1.0)


def test_generation_stops_within_the_budget(tiny_models):
    from gen_ssd_dagster.core.experiments.comparison import generate_within_budget, posthoc_from
    from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig, StandardKDConfig

    teacher, scorer = _backends(tiny_models)
    problems = _problems(12)
    kd = StandardKDConfig(num_candidates=2, sampling=SamplingConfig(**SMALL_SAMPLING))
    everything = generate_within_budget(kd, problems, teacher, scorer, budget=10**9, batch_size=4)
    assert everything.pool_exhausted and everything.problems == 12
    costs = {}
    for t in everything.trajectories:
        costs[t.problem_id] = costs.get(t.problem_id, 0) + t.teacher_tokens
    per_problem = [costs[p.problem_id] for p in problems]

    budget = sum(per_problem[:5]) + per_problem[5] // 2  # five problems fit, the sixth does not
    part = generate_within_budget(kd, problems, teacher, scorer, budget=budget, batch_size=4)
    assert (part.problems, part.teacher_tokens, part.pool_exhausted) == (5, sum(per_problem[:5]), False)
    assert [t.text for t in part.trajectories] == [t.text for t in everything.trajectories[:10]]  # same samples

    posthoc = posthoc_from(part)
    assert posthoc.teacher_tokens == part.teacher_tokens
    chosen = [t for t in posthoc.trajectories if t.selected]
    assert len({t.problem_id for t in chosen}) == len(chosen)  # at most one per problem
    assert all(t.method == "posthoc" for t in posthoc.trajectories)
    assert not any(t.method == "posthoc" for t in part.trajectories)  # KD's samples untouched

    gen = GenSSDConfig(num_candidates=2, chunk_tokens=8, suitability="none", sampling=SamplingConfig(**SMALL_SAMPLING))
    assert generate_within_budget(gen, problems, teacher, scorer, budget=1, batch_size=4).problems == 0


def _arm(label, seed, accuracy, **kw):
    from gen_ssd_dagster.core.experiments.comparison import ArmResult

    return ArmResult(kind="comparison", label=label, method=label, seed=seed, accuracy=accuracy, n_test=100,
                     n_correct=int(accuracy * 100), **kw)


def test_table_reports_mean_spread_and_paired_difference():
    from gen_ssd_dagster.core.experiments.comparison_table import markdown, summarise

    arms = [_arm("standard_kd", 0, 0.10, problems=10, selected=20, teacher_tokens=1000),
            _arm("standard_kd", 1, 0.20, problems=10, selected=20, teacher_tokens=1000),
            _arm("gen_ssd", 0, 0.30, problems=20, selected=10, teacher_tokens=1000, pruned=5),
            _arm("gen_ssd", 1, 0.30, problems=20, selected=10, teacher_tokens=1000, pruned=5)]
    rows = {r["label"]: r for r in summarise(arms)}
    assert rows["standard_kd"]["accuracy"].mean == pytest.approx(0.15)
    assert rows["standard_kd"]["accuracy"].sd == pytest.approx(0.0707, abs=1e-3)
    assert rows["gen_ssd"]["vs_standard_kd"].mean == pytest.approx(0.15)  # +0.20 and +0.10, paired by seed
    assert rows["gen_ssd"]["prune"].mean == pytest.approx(0.25)
    assert rows["gen_ssd"]["tokens_per_accepted"].mean == pytest.approx(100)
    table = markdown(arms, 1000)
    assert "| Standard KD | 2 | 15.0 ± 7.1 |" in table
    assert "| Gen-SSD | 2 | 30.0 ± 0.0 | +15.0 ± 7.1 |" in table
    assert list(rows) == ["standard_kd", "gen_ssd"]


def test_table_pairs_by_seed_and_question_with_seeds_and_questions_random():
    """2 seeds x 4 questions. KD right on [q1] and [q1,q2]; Gen-SSD on [q1,q2] and [q1,q2,q3].
    d per (seed, q): s0 [0,1,0,0], s1 [0,0,1,0]; per seed .25 and .25 (no seed spread); per question
    [0,.5,.5,0]: question_var = var/4 = (.25/3)/4 = .02083, seed_var = max(0, 0 - noise) = 0,
    mean SE = sqrt(.02083) = .1443 -> +25.0 ± 28.3. One seed's SE: sqrt(var([0,1,0,0])/4) = .25."""
    from gen_ssd_dagster.core.experiments.comparison_table import markdown, paired_vs_standard_kd, spread_sources

    def graded(right):
        return {f"q{i}": i in right for i in range(1, 5)}

    arms = [_arm("standard_kd", 0, 0.25, graded=graded({1})), _arm("standard_kd", 1, 0.5, graded=graded({1, 2})),
            _arm("gen_ssd", 0, 0.5, graded=graded({1, 2})), _arm("gen_ssd", 1, 0.75, graded=graded({1, 2, 3}))]
    p = paired_vs_standard_kd(arms, "gen_ssd")
    assert (p["estimate"], p["n_seeds"], p["n_questions"]) == (0.25, 2, 4)
    assert p["stderr"] == pytest.approx((0.25 / 3 / 4) ** 0.5)
    assert p["components"].single_seed_stderr == pytest.approx(0.25) and p["components"].seed_var == 0
    table = markdown(arms)
    assert "| Gen-SSD | 2 | 62.5 ± 17.7 | +25.0 ± 0.0 | +25.0 ± 28.3 (2 × 4) |" in table
    assert "standard error of 25.0 points, of which training seeds give 0.0 and the 4 test questions 25.0" \
        in spread_sources(arms)
    # Arms stored before per-question grades were kept: no paired column, no error.
    assert paired_vs_standard_kd([dataclasses.replace(a, graded={}) for a in arms], "gen_ssd") is None


def test_sweep_knobs_are_typed_and_checked_before_any_work():
    from gen_ssd_dagster.core.method.config import GenSSDConfig
    from gen_ssd_dagster.core.errors import ConfigError
    from gen_ssd_dagster.core.experiments.sweep import parse_knobs, sweep_points

    knobs = parse_knobs(["chunk_tokens=8,32", "ppl_ratio=2.5", "snap_to_line=false", "temperature=0.7"])
    assert knobs == {"chunk_tokens": [8, 32], "ppl_ratio": [2.5], "snap_to_line": [False], "temperature": [0.7]}
    points = sweep_points(GenSSDConfig(), knobs)
    assert [p[2].chunk_tokens for p in points[:2]] == [8, 32] and points[-1][2].sampling.temperature == 0.7
    with pytest.raises(ConfigError, match="chunk_tokns"):
        parse_knobs(["chunk_tokns=8"])
    with pytest.raises(ConfigError, match="'eight' of chunk_tokens"):
        parse_knobs(["chunk_tokens=eight"])
    with pytest.raises(ConfigError, match="chunk_tokens must be >= 1"):
        sweep_points(GenSSDConfig(), {"chunk_tokens": [16, 0]})


@pytest.mark.slow
def test_comparison_and_sweep_assets(tmp_path, tiny_models, memorizing_teacher, capsys):
    """Both experiments through Dagster on the demo: arms in DuckDB at the budget, one MLflow run
    each, table and plot as metadata; a second materialization reuses every stored arm."""
    from mlflow import MlflowClient

    from gen_ssd_dagster import cli
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home, Store
    from gen_ssd_dagster.store.experiments import experiment_arms

    home = Home.resolve(tmp_path / "home")
    knobs = {"num_candidates": 2, "sampling": {"max_new_tokens": 96, "temperature": 0.3}}
    small = {**knobs, "batch_size": 4}
    experiment = {"pool_offset": 4, "teacher_token_budget": 400, "batch_size": 4, "train": {"epochs": 1},
                  "eval": {"max_new_tokens": 96}, "gen_ssd": {**knobs, "suitability": "none", "chunk_tokens": 16},
                  "standard_kd": knobs}
    rc = {"ops": {"cold_start_student": {"config": {**small, "max_problems": 4, "train": {"epochs": 2}}},
                  "method_comparison": {"config": {**experiment, "seeds": [0, 1]}},
                  "gen_ssd_knob_sweep": {"config": {**experiment, "knobs": {"chunk_tokens": ["8", "16"]},
                                                    "calibration_quantile": 0.9, "calibration_problems": 2,
                                                    "threshold_rule": "median_multiple"}}}}
    resources = {"models": ModelsResource(teacher=str(memorizing_teacher), student=str(tiny_models[1])),
                 "data": DataResource(**DEMO_SIZES)}
    selection = ["teacher", "base_student", "problems", "benchmarks", "cold_start_student",
                 "method_comparison", "gen_ssd_knob_sweep"]
    result = run_pipeline(home, "demo", rc, resources, log=lambda _: None, selection=selection)
    assert result.success

    store = Store(home.db_path)
    arms = experiment_arms(store, kind="comparison")
    assert sorted((a.label, a.seed) for a in arms if a.kind == "comparison") == [
        (m, s) for m in ("answer_likelihood", "gen_ssd", "posthoc", "standard_kd") for s in (0, 1)]
    assert {a.label for a in arms if a.kind == "reference"} == {"base", "cold_start"}
    for a in arms:
        assert a.teacher_tokens <= 400 and 0 <= a.accuracy <= 1 and a.n_test == DEMO_SIZES["demo_test"]
    by = {(a.label, a.seed): a for a in arms}
    for seed in (0, 1):
        assert by["posthoc", seed].teacher_tokens == by["standard_kd", seed].teacher_tokens > 0
        assert by["posthoc", seed].selected <= by["standard_kd", seed].selected
        # the MoRSD-style arm re-selects the same samples: same cost, one per problem at most
        assert by["answer_likelihood", seed].teacher_tokens == by["standard_kd", seed].teacher_tokens
        assert by["answer_likelihood", seed].selected == by["posthoc", seed].selected
        assert by["gen_ssd", seed].config["sampling"]["seed"] == seed
    sweep = experiment_arms(store, kind="sweep")
    assert sorted(a.label for a in sweep) == ["chunk_tokens=16", "chunk_tokens=8"]
    assert [a.config["chunk_tokens"] for a in sorted(sweep, key=lambda a: a.label)] == [16, 8]
    # the sweep calibrated its thresholds: every point records where they came from
    assert {a.config["calibration"]["quantile"] for a in sweep} == {0.9}
    assert {a.config["calibration"]["rule"] for a in sweep} == {"median_multiple"}  # the knob reached the record
    assert {a.config["max_ppl"] for a in sweep} == {sweep[0].config["calibration"]["max_ppl"]}
    assert "calibration" not in by["gen_ssd", 0].config  # the comparison's thresholds were hand-set

    events = {e.asset_key.to_user_string(): e.step_materialization_data.materialization
              for e in result.get_asset_materialization_events()}
    meta = events["method_comparison"].metadata
    assert "| Gen-SSD | 2 |" in meta["comparison"].value and "data:image/png;base64," in meta["plot"].value
    client = MlflowClient(home.mlflow_uri)
    run = client.get_run(meta["mlflow_run"].value.rsplit("/", 1)[-1])
    assert run.info.status == "FINISHED"
    gen = [a.accuracy for a in arms if a.label == "gen_ssd"]
    assert run.data.metrics["gen_ssd.accuracy.mean"] == pytest.approx(sum(gen) / 2)
    assert {f.path for f in client.list_artifacts(run.info.run_id, "plots")} == {f"plots/{meta['experiment'].value}.png"}

    # Re-materializing the same experiment trains nothing: every arm comes from DuckDB.
    rows_before = store.query("SELECT count(*), max(created_at) FROM experiment_arms")
    again = run_pipeline(home, "demo", rc, resources, log=lambda _: None,
                         selection=["method_comparison", "gen_ssd_knob_sweep"])
    assert again.success
    assert store.query("SELECT count(*), max(created_at) FROM experiment_arms") == rows_before

    # Another Gen-SSD knob is a new experiment: Standard KD's, post-hoc's and the reference arms are
    # reused (not trained again) and listed in it too, so its table is complete.
    first = {a.label: a for a in arms if a.seed in (0, None)}
    rc["ops"]["method_comparison"]["config"]["gen_ssd"]["chunk_tokens"] = 8
    assert run_pipeline(home, "demo", rc, resources, log=lambda _: None, selection=["method_comparison"]).success
    second = experiment_arms(store, kind="comparison")
    assert len(second) == len(arms) and second[0].checkpoint
    again_by = {a.label: a for a in second if a.seed in (0, None)}
    for label in ("base", "cold_start", "standard_kd", "posthoc", "answer_likelihood"):
        assert again_by[label].to_dict() == first[label].to_dict()
    assert again_by["gen_ssd"].config["chunk_tokens"] == 8 != first["gen_ssd"].config["chunk_tokens"]

    # Other evaluation settings re-score the kept students: nothing is generated or trained again.
    rc["ops"]["method_comparison"]["config"]["eval"] = {"max_new_tokens": 96, "samples": 2, "temperature": 1.0}
    assert run_pipeline(home, "demo", rc, resources, log=lambda _: None, selection=["method_comparison"]).success
    before = {(a.label, a.seed): a for a in second}
    third = experiment_arms(store, kind="comparison")
    assert sorted((a.label, a.seed) for a in third) == sorted(before)
    for arm in third:
        old = before[arm.label, arm.seed]
        assert (arm.checkpoint, arm.train_seconds, arm.generate_seconds) == (old.checkpoint, old.train_seconds,
                                                                             old.generate_seconds)
        assert arm.evaluation["settings"]["samples"] == 2 and old.evaluation["settings"] == {"max_new_tokens": 96}
        assert sorted(map(len, arm.graded.values())) == [2] * DEMO_SIZES["demo_test"]

    assert cli.main(["--home", str(home.root), "report"]) == 0
    out = capsys.readouterr().out
    assert "Method comparison" in out and "Gen-SSD knob sweep" in out and "post-hoc filter" in out
    assert cli.main(["--home", str(home.root), "report", "--json"]) == 0
    paired = json.loads(capsys.readouterr().out)["experiment_differences"]["comparison"]["differences"]
    assert {r["label"] for r in paired} == {"gen_ssd", "posthoc", "answer_likelihood"}
    for r in paired:
        assert r["n_seeds"] == 2 and r["low95"] <= r["estimate"] <= r["high95"] and r["seed_var"] >= 0


def test_sweep_cli_rejects_a_bad_knob_before_loading_anything(tmp_path, capsys):
    from gen_ssd_dagster import cli

    assert cli.main(["--home", str(tmp_path / "home"), "sweep", "--knob", "chunk_tokns=8,16"]) == 2
    err = capsys.readouterr().err
    assert "unknown Gen-SSD knob 'chunk_tokns'" in err and "chunk_tokens" in err
    assert not (tmp_path / "home").exists()  # nothing written


@pytest.mark.parametrize("name", ["small.yaml", "hard_teacher.yaml", "reasoning_teacher.yaml", "easy_teacher.yaml",
                                  "smollm2_gsm8k.yaml", "gpu_7b_vllm.yaml"])
def test_shipped_configs_are_valid_run_config(name):
    """A shipped config loads, and Dagster accepts its ops' config for the assets they name."""
    from pathlib import Path

    from dagster._config import validate_config

    from gen_ssd_dagster.definitions import defs
    from gen_ssd_dagster.pipeline import load_config

    run_config, overrides = load_config(str(Path(__file__).resolve().parents[1] / "configs" / name))
    assert "models" in overrides  # every shipped config sets the models (teacher, student or demo sizes)
    assert overrides["models"].demo.to_core().validate() is None
    definitions = defs()
    assets = [definitions.resolve_assets_def(k) for k in definitions.resolve_asset_graph().materializable_asset_keys]
    schemas = {a.op.name: a.op.config_schema.config_type for a in assets}
    for op, config in run_config.get("ops", {}).items():
        result = validate_config(schemas[op], config.get("config", {}))
        assert result.success, (op, [e.message for e in result.errors])
    assert not validate_config(schemas["method_comparison"], {"gen_ssd": {"max_ppl": "high"}}).success


def test_report_json_carries_each_methods_paired_difference(tmp_path, capsys):
    """A stored comparison (2 seeds x 4 questions, the table test's example): `report --json` gives
    the table's paired difference, its 95% interval and its seed / question variance split."""
    from gen_ssd_dagster import cli
    from gen_ssd_dagster.store import Home, Store
    from gen_ssd_dagster.store.experiments import save_arm

    def graded(right):
        return {f"q{i}": i in right for i in range(1, 5)}

    home = Home.resolve(tmp_path / "home")
    store = Store(home.db_path)
    arms = [_arm("standard_kd", 0, 0.25, graded=graded({1})), _arm("standard_kd", 1, 0.5, graded=graded({1, 2})),
            _arm("gen_ssd", 0, 0.5, graded=graded({1, 2})), _arm("gen_ssd", 1, 0.75, graded=graded({1, 2, 3})),
            _arm("posthoc", 0, 0.25, graded=graded({1})), _arm("posthoc", 1, 0.25, graded=graded({2}))]
    for i, arm in enumerate(arms):
        save_arm(store, f"k{i}", arm, "comparison-1", "demo", "demo")
    assert cli.main(["--home", str(home.root), "report", "--json"]) == 0
    paired = json.loads(capsys.readouterr().out)["experiment_differences"]["comparison"]
    assert paired["experiment"] == "comparison-1"
    rows = {r["label"]: r for r in paired["differences"]}
    assert set(rows) == {"gen_ssd", "posthoc"}  # Standard KD is what the others are minus
    gen = rows["gen_ssd"]
    se = (0.25 / 3 / 4) ** 0.5
    assert (gen["estimate"], gen["n_seeds"], gen["n_questions"], gen["minus"]) == (0.25, 2, 4, "standard_kd")
    assert gen["stderr"] == pytest.approx(se)
    assert (gen["low95"], gen["high95"]) == (pytest.approx(0.25 - 1.959964 * se), pytest.approx(0.25 + 1.959964 * se))
    assert gen["seed_var"] == 0 and gen["question_var"] == pytest.approx(0.25 / 3 / 4)
    assert gen["components"]["single_seed_stderr"] == pytest.approx(0.25)
    assert rows["posthoc"]["estimate"] == pytest.approx(-0.125)
