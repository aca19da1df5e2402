"""Accuracy of every student on every chosen benchmark, in DuckDB and MLflow, with GRADER_VERSION."""

import hashlib
import json

import dagster as dg

from ..core.experiments.comparison_table import markdown
from ..core.evaluation.evaluate import evaluate
from ..core.data.grading import GRADER_VERSION
from ..core.engines.engine_settings import VLLMEngineSettings
from ..core.engines.models import ModelSpec, model_version
from ..core.method.methods import METHODS
from ..core.progress import Reporter
from ..core.data.solution_text import SolutionEnd
from ..core.types import problems_digest
from ..store.eval_outputs import EvalLedger
from ..store.experiments import experiment_arms, latest_experiment
from ..store.scores import STUDENT_ORDER, EvaluationScore, cached_score, latest_scores, report, write_scores
from ..store.trajectories import read_problems
from .. import asset_metadata
from .resources import GPU_POOL, MLflowResource, ModelsResource, StoreResource
from ..run_config.asset_configs import EvaluationConfig, solution_end_of


def _latest_comparison(db, store: StoreResource) -> dict:
    """The latest equal-budget comparison (the method_comparison asset), shown beside the scores:
    one seed at the pipeline's sizes says little, the comparison's spreads say more."""
    name = latest_experiment(db, "comparison")
    if name is None:
        return {"comparison": dg.MetadataValue.md("(no method comparison yet: `gen-ssd compare`, or materialize "
                                                  "method_comparison)")}
    arms = experiment_arms(db, name)
    return {"comparison": dg.MetadataValue.md(f"Latest comparison `{name}`:\n\n{markdown(arms)}"),
            "comparison_plot": asset_metadata.comparison_plot(arms, store.home_dir().plots / f"{name}.png")}


@dg.asset(
    group_name="evaluation", pool=GPU_POOL, kinds={"duckdb", "mlflow"}, deps=["benchmarks"],
    ins={m: dg.AssetIn(["distilled_students", m], dagster_type=ModelSpec) for m in METHODS},
)
def evaluation_scores(context: dg.AssetExecutionContext, config: EvaluationConfig, base_student: ModelSpec,
                      cold_start_student: ModelSpec, store: StoreResource, mlflow: MLflowResource,
                      models: ModelsResource, **distilled: ModelSpec) -> dg.MaterializeResult:
    """pass@1 (greedy by default; n samples per question at a temperature if configured) of the base,
    cold-start and distilled students on each benchmark, with 95% intervals and paired differences."""
    db = store.store()
    given = {"base": base_student, "cold_start": cold_start_student, **distilled}
    students = {s: given[s] for s in sorted(given, key=STUDENT_ORDER.index)}  # in the report's order
    ends = {bench: SolutionEnd(solution_end_of(bench, config.solution_end), tuple(config.stop_strings))
            for bench in config.benchmarks}
    eval_settings = config.settings()
    settings = {"max_problems": config.max_problems, **eval_settings.key()}
    if config.solution_end or config.stop_strings:  # the defaults keep the hash stored work was made under
        settings.update(solution_end=config.solution_end, stop_strings=config.stop_strings)
    quantized = models.engines().get("eval_engine", VLLMEngineSettings()).version_suffix()
    if quantized:  # answers of a quantized student are other answers
        settings["eval_engine"] = quantized
    benches, eval_hash = {}, {}
    for bench in config.benchmarks:
        benches[bench] = read_problems(db, bench, "test", config.max_problems)
        if not benches[bench]:
            raise dg.Failure(f"benchmark {bench!r} has no test problems stored: materialize benchmarks[{bench}]")
        # The questions are part of the key: a benchmark stored anew (more or other problems) is scored anew.
        problems = problems_digest(benches[bench])
        eval_hash[bench] = hashlib.sha256(json.dumps({**settings, "problems": problems}).encode()).hexdigest()[:12]
    session = mlflow.session()
    scores = []
    with session.run("evaluation", tags={"grader_version": GRADER_VERSION, "dagster_run_id": context.run.run_id}) as run:
        for student, spec in students.items():
            version = model_version(spec)
            for bench, problems in benches.items():
                hit = cached_score(db, version, bench, GRADER_VERSION, eval_hash[bench])
                if hit is None:
                    # Batches land in DuckDB as they finish: a restarted evaluation only does the rest.
                    result = evaluate(spec, problems, eval_settings, config.batch_size,
                                      ledger=EvalLedger(db, version, bench, GRADER_VERSION, eval_hash[bench]),
                                      solution_end=ends[bench], engine=models.make_student_sampler,
                                      progress=Reporter(f"{student} on {bench}", context.log.info, unit="questions"))
                    n, n_correct, accuracy = result.n, result.n_correct, result.accuracy
                    run.log_text("\n".join(json.dumps(o) for o in result.outputs), f"outputs/{student}_{bench}.jsonl")
                else:
                    n, n_correct, accuracy = hit
                context.log.info(f"{student} on {bench}: pass@1 {100 * accuracy:.1f}% over {n} questions"
                                 f" × {eval_settings.samples} samples{' (cached)' if hit else ''}")
                scores.append(EvaluationScore(student, version, bench, n, n_correct, accuracy, GRADER_VERSION,
                                              eval_hash[bench], spec.name_or_path, context.run.run_id, run.run_id,
                                              eval_settings.samples, json.dumps(eval_settings.record())))
        run.log(metrics={f"accuracy.{s.student}.{s.benchmark}": s.accuracy for s in scores},
                params={"benchmarks": ",".join(config.benchmarks), "max_problems": config.max_problems,
                        **{f"eval.{k}": v for k, v in eval_settings.record().items()},
                        **{f"engine.{k}": v for k, v in models.engine_record("eval_engine").items()},
                        "grader_version": GRADER_VERSION},
                tags={f"model_version.{s}": model_version(spec) for s, spec in students.items()})
        write_scores(db, scores)
        df = latest_scores(db)
        df = df[df.benchmark.isin(config.benchmarks)]
        table, intervals, diffs, majs = report(db, df)
        run.log(metrics={**{f"{edge}.{s}.{b}": getattr(ci, edge) for (s, b), ci in intervals.items() if ci
                            for edge in ("low", "high")},
                         **{f"maj_at_{k}.{s}.{b}": ci.estimate for (s, b), (k, ci) in majs.items()},
                         **{f"minus_standard_kd.{s}.{b}": d.estimate for s, b, d in diffs}})
        run.log_text(table, "evaluation_table.md")
    return dg.MaterializeResult(metadata={
        "scores": dg.MetadataValue.md(table), "grader_version": GRADER_VERSION,
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(session.experiment_id, run.run_id)),
        **_latest_comparison(db, store),
        **{f"model_version/{s}": model_version(spec) for s, spec in students.items()},
        "accuracy_plot": asset_metadata.accuracy_bars(df, store.home_dir().plots / "evaluation_scores.png", intervals),
        **{f"accuracy/{s.student}/{s.benchmark}": round(s.accuracy, 4) for s in scores}})
