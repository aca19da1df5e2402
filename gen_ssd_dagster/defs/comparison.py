"""Experiments on top of the pipeline: the equal-budget method comparison and the knob sweep.

Both read the teacher, the cold-start student and the stored problems, run arms through
core/experiments/comparison.py (every arm stored in DuckDB's `experiment_arms` as it finishes, so a crashed
experiment resumes), log one MLflow run with the table and plots, and show both as metadata.
They are not part of `gen-ssd pipeline` (they take tens of minutes): `gen-ssd compare`,
`gen-ssd sweep`, or materialize them in the UI.
"""

import hashlib
import json

import dagster as dg

from ..core.experiments.comparison import COMPARISON_METHODS, ArmResult, arm_key, evaluation_of, reference_arm, run_comparison
from ..core.experiments.comparison_table import markdown, summarise
from ..core.engines.models import ModelSpec, model_version
from ..core.experiments.sweep import parse_knobs, run_sweep
from ..store.experiments import find_arm, save_arm
from ..store.trajectories import read_problems
from ..core.types import questions_digest
from .. import asset_metadata
from .resources import GPU_POOL, MLflowResource, ModelsResource, StoreResource
from ..run_config.asset_configs import ComparisonRunConfig, SweepRunConfig


def _inputs(config, store: StoreResource):
    db = store.store()
    pool = read_problems(db, config.dataset, "train", config.max_pool, config.pool_offset)
    test = read_problems(db, config.benchmark, "test", config.max_test)
    if not pool:
        raise dg.Failure(f"no training problems of {config.dataset!r} after the first {config.pool_offset}: "
                         f"materialize problems[{config.dataset}] (or lower pool_offset)")
    if not test:
        raise dg.Failure(f"benchmark {config.benchmark!r} has no test problems stored: "
                         f"materialize benchmarks[{config.benchmark}]")
    return pool, test


def _context(teacher_version: str, scorer_version: str, pool) -> dict:
    """The inputs every arm's student shares, for the arm keys: change one and the arms are new work.
    (The test set is not one: arms are re-scored on another, see core.experiments.comparison.stored_or_rescored.)"""
    return {"teacher": teacher_version, "scorer": scorer_version, "pool": questions_digest(pool)}


def _persist(store: StoreResource, experiment: str, config, dagster_run_id: str, evaluation: dict):
    """DuckDB lookup and save of arms. A stored arm is listed in this experiment when it is found only
    if it was scored as this experiment scores (`evaluation`); otherwise the comparison re-scores it
    first and saves it then, so an interrupted run never lists an arm scored under other settings."""
    db = store.store()

    def save(key: str, arm: ArmResult) -> None:
        save_arm(db, key, arm, experiment, config.dataset, config.benchmark, dagster_run_id)

    def lookup(key: str) -> ArmResult | None:
        found = find_arm(db, key)
        if found is None:
            return None
        arm, experiments = found
        if experiment not in experiments and arm.evaluation == evaluation:  # reused: listed in this one too
            save(key, arm)
        return arm

    return lookup, save


# EvalSettings fields the comparison had no knob for before `eval:` was a section, at the value it used.
_EVAL_ADDED = {"maj_k": None, "seed": 0}


def _experiment_id(kind: str, config, context: dict) -> str:
    """The experiment's name: a hash of its run config and shared inputs. The `eval:` section is
    hashed as the flat `eval_<field>` knobs it replaced (the added ones only when set), so an
    experiment keeps its name and its stored arms stay listed in it."""
    dump = config.model_dump()
    for name, value in dump.pop("eval").items():
        if _EVAL_ADDED.get(name, object()) != value:
            dump[f"eval_{name}"] = value
    blob = json.dumps({"config": dump, **context}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _log_mlflow(mlflow: MLflowResource, name: str, experiment: str, arms: list[ArmResult], params: dict,
                table: str, plots: dict, tags: dict):
    session = mlflow.session()
    with session.run(name, tags={"experiment": experiment, **tags}) as run:
        metrics = {}
        for row in summarise(arms):
            for metric in ("accuracy", "vs_standard_kd", "ppl", "student_tokens", "tokens_per_accepted", "prune"):
                if row[metric] is not None:
                    metrics[f"{row['label']}.{metric}.mean"] = row[metric].mean
                    metrics[f"{row['label']}.{metric}.sd"] = row[metric].sd
        run.log(params=params, metrics={k.replace("=", "_"): v for k, v in metrics.items()})
        run.log_text(table, f"{name}.md")
        run.log_text("\n".join(json.dumps(a.to_dict(), default=str) for a in arms), f"{name}_arms.jsonl")
        for path in plots.values():
            run.log_file(path, "plots")
        return mlflow.run_url(session.experiment_id, run.run_id)


@dg.asset(group_name="comparison", pool=GPU_POOL, kinds={"duckdb", "mlflow"}, deps=["problems", "benchmarks"])
def method_comparison(context: dg.AssetExecutionContext, config: ComparisonRunConfig, teacher: ModelSpec,
                      base_student: ModelSpec, cold_start_student: ModelSpec, models: ModelsResource,
                      store: StoreResource, mlflow: MLflowResource) -> dg.MaterializeResult:
    """Does Gen-SSD beat Standard KD, post-hoc filtering and the answer-likelihood selection here?
    One student per method per seed, each trained from the cold-start checkpoint on data that cost
    the same teacher-token budget,
    all scored on the same benchmark; the table gives mean ± sd over seeds, with the base and
    cold-start students for reference."""
    core = config.core(config.seeds)
    pool, test = _inputs(config, store)
    teacher_backend, scorer = models.make_teacher(teacher), models.make_scorer(cold_start_student)
    shared, scored = _context(teacher_backend.version, scorer.version, pool), evaluation_of(test, core)
    experiment = _experiment_id("comparison", config, {**shared, **scored})
    lookup, save = _persist(store, experiment, config, context.run.run_id, scored)
    context.log.info(f"{experiment}: {len(config.seeds)} seeds x {len(COMPARISON_METHODS)} methods, {len(pool)} pool problems, "
                     f"{len(test)} test problems, budget {core.teacher_token_budget} teacher tokens per arm")
    out_dir = store.home_dir().checkpoints / "comparison" / experiment
    arms = []
    for label, spec in (("base", base_student), ("cold_start", cold_start_student)):
        key = arm_key("reference", label, -1, {"model_version": model_version(spec), **scored},
                      core, shared)
        arm = lookup(key)
        if arm is None:
            arm = reference_arm(label, spec, test, core)
            save(key, arm)
        arms.append(arm)
    arms += run_comparison(core, cold_start_student, pool, test, teacher_backend, scorer, out_dir,
                           shared, lookup, save, context.log.info)
    table = markdown(arms, core.teacher_token_budget)
    plot_path = store.home_dir().plots / f"{experiment}.png"
    plot = asset_metadata.comparison_plot(arms, plot_path)
    url = _log_mlflow(mlflow, "method_comparison", experiment, arms,
                              {"seeds": ",".join(map(str, config.seeds)), "budget": core.teacher_token_budget,
                               "dataset": config.dataset, "benchmark": config.benchmark},
                              table, {"comparison": plot_path},
                              {"teacher_version": shared["teacher"], "student_version": shared["scorer"],
                               "dagster_run_id": context.run.run_id})
    rows = {r["label"]: r for r in summarise(arms)}
    return dg.MaterializeResult(metadata={
        "comparison": dg.MetadataValue.md(table), "plot": plot, "experiment": experiment,
        "mlflow_run": dg.MetadataValue.url(url), "plot_path": dg.MetadataValue.path(str(plot_path)),
        **{f"accuracy/{label}": round(r["accuracy"].mean, 4) for label, r in rows.items()},
        **({"gen_ssd_minus_standard_kd_pts": round(100 * rows["gen_ssd"]["vs_standard_kd"].mean, 2)}
           if "gen_ssd" in rows and rows["gen_ssd"]["vs_standard_kd"] else {}),
        "model_version/cold_start": model_version(cold_start_student), "teacher_version": shared["teacher"],
    })


@dg.asset(group_name="comparison", pool=GPU_POOL, kinds={"duckdb", "mlflow"}, deps=["problems", "benchmarks"])
def gen_ssd_knob_sweep(context: dg.AssetExecutionContext, config: SweepRunConfig, teacher: ModelSpec,
                       cold_start_student: ModelSpec, models: ModelsResource, store: StoreResource,
                       mlflow: MLflowResource) -> dg.MaterializeResult:
    """Tune Gen-SSD: for each knob (chunk size, K, pruning threshold, ...) and each of its values,
    a student trained on Gen-SSD data of the same teacher-token budget; accuracy and teacher cost
    per trajectory against each knob, one knob at a time around the base configuration."""
    core = config.core([config.seed])
    knobs = parse_knobs([f"{k}={','.join(v)}" for k, v in config.knobs.items()], core.gen_ssd)
    pool, test = _inputs(config, store)
    teacher_backend, scorer = models.make_teacher(teacher), models.make_scorer(cold_start_student)
    shared, scored = _context(teacher_backend.version, scorer.version, pool), evaluation_of(test, core)
    experiment = _experiment_id("sweep", config, {**shared, **scored})
    lookup, save = _persist(store, experiment, config, context.run.run_id, scored)
    out_dir = store.home_dir().checkpoints / "sweep" / experiment
    arms = run_sweep(core, knobs, config.seed, cold_start_student, pool, test, teacher_backend, scorer,
                     out_dir, shared, lookup, save, context.log.info)
    table = markdown(arms, core.teacher_token_budget)
    plot_path = store.home_dir().plots / f"{experiment}.png"
    plot = asset_metadata.sweep_plot(arms, knobs, plot_path)
    url = _log_mlflow(mlflow, "gen_ssd_knob_sweep", experiment, arms,
                              {"seed": config.seed, "budget": core.teacher_token_budget, "dataset": config.dataset,
                               "knobs": json.dumps(config.knobs)},
                              table, {"sweep": plot_path}, {"dagster_run_id": context.run.run_id})
    return dg.MaterializeResult(metadata={
        "sweep": dg.MetadataValue.md(table), "plot": plot, "experiment": experiment,
        "mlflow_run": dg.MetadataValue.url(url), "plot_path": dg.MetadataValue.path(str(plot_path)),
        **{f"accuracy/{a.label}": round(a.accuracy, 4) for a in arms},
    })


EXPERIMENT_ASSETS = [method_comparison, gen_ssd_knob_sweep]
