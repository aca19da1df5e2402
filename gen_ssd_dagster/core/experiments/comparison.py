"""Does Gen-SSD beat the baselines? Students trained at an equal teacher-token budget, over seeds.

An *arm* is one way of making training data (a method, or Gen-SSD at one knob setting) under one
seed: generate trajectories from the seed's problem stream until the teacher-token budget is spent,
fine-tune the cold-start student on the selected ones, and evaluate it greedily on the test set.

How the budget is matched: problems are taken in the seed's order, a batch at a time. After
generating, the arm keeps the longest prefix of problems whose teacher tokens (every token the
teacher generated for them: rejected candidates and pruned paths included) sum to at most the
budget; the rest of the last batch is dropped (the rule of `budget.BudgetMeter`, which the
pipeline's trajectory assets share). So every arm's training data cost at most the
budget, and at least the budget minus one problem's cost. Post-hoc filtering and the
answer-likelihood selection (MoRSD-style) select among the very same samples as Standard KD (per
problem, the lowest-PPL correct sample, or the correct sample whose answer the student finds
likeliest, instead of every correct one), so their cost equals Standard KD's by construction and
they differ from it only in what they keep.

A seed changes the order of the problem stream, the teacher's sampling and the training shuffle.
The cold-start checkpoint, the scorer and the test set are shared by every arm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gen_ssd_dagster.core.experiments.budget import BudgetMeter, seed_order
from gen_ssd_dagster.core.method.calibration import (CALIBRATION_PROBLEMS, CALIBRATION_QUANTILE, calibrate, calibrated,
                                                     summary, validate_quantile)
from gen_ssd_dagster.core.method.threshold_rules import ThresholdRule, validate_rule
from gen_ssd_dagster.core.method.config import (GenSSDConfig, MethodConfig, PostHocConfig, SamplingConfig, StandardKDConfig,
                                                config_dict)
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings, evaluate
from gen_ssd_dagster.core.method.methods import METHODS
from gen_ssd_dagster.core.method.registry import run_method, training_examples
from gen_ssd_dagster.core.method.reselection import ANSWER_LIKELIHOOD, answer_likelihood_reselected, posthoc_reselected
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.progress import Reporter
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
from gen_ssd_dagster.core.types import ArmResult, Log, Problem, Trajectory, problems_digest

# The methods of the table, then the selection only the comparison has (MoRSD-style answer likelihood).
COMPARISON_METHODS = (*METHODS, ANSWER_LIKELIHOOD)
KD_RESELECTIONS = ("posthoc", ANSWER_LIKELIHOOD)  # arms that re-select Standard KD's own samples
# The distillation recipe. Measured on the demo: with 3 epochs at 1e-3 the 0.27M student stayed
# near its cold-start accuracy whatever it was given (1,000 gold stepwise solutions: 6.5%); 8
# epochs at 3e-3 took the same data to 26.5%, so the methods' data can make a difference.
DISTILL_TRAIN = TrainConfig(epochs=8, learning_rate=3e-3, batch_size=16, bf16=True)


@dataclass(frozen=True)
class ComparisonConfig:
    """An equal-budget comparison of Gen-SSD with Standard KD and post-hoc filtering.

    seeds: one arm per method per seed; results are reported as mean and spread over seeds.
    teacher_token_budget: teacher tokens each arm may spend on its training data.
    batch_size: problems generated per batch.
    gen_ssd / standard_kd: the methods' knobs (the seed of their sampling is replaced by the arm's).
        Post-hoc filtering re-selects Standard KD's samples by their per-token PPL.
    train: how each arm's student is fine-tuned from the cold-start checkpoint (seed replaced).
    eval: how each student answers the test problems (`evaluation.EvalSettings`; default one greedy
        answer each).
    eval_batch_size: test questions per generation batch.
    threshold_rule: "hand" keeps gen_ssd's hand-set max_ppl and ppl_ratio; "teacher_quantile",
        "mode_split" or "median_multiple" replaces them, once before the first arm, by that rule
        (docs/thresholds.md) applied to the cold-start student's PPLs of the teacher's lines on
        `calibration_problems` problems held back from the end of the pool (`calibration.calibrate`).
        Every arm then draws from the rest of the pool.
    calibration_quantile: the quantile of "teacher_quantile" (None: 0.9); set with the rule "hand",
        it means "teacher_quantile" at that quantile (as before rules had names).
    """

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # 5 seeds fit the 30-minute budget on 2 cores (docs/evaluation.md)
    teacher_token_budget: int = 100_000
    batch_size: int = 32
    gen_ssd: GenSSDConfig = GenSSDConfig()
    standard_kd: StandardKDConfig = StandardKDConfig()
    train: TrainConfig = DISTILL_TRAIN
    eval: EvalSettings = EvalSettings()
    eval_batch_size: int = 32
    threshold_rule: ThresholdRule = "hand"
    calibration_quantile: float | None = None
    calibration_problems: int = CALIBRATION_PROBLEMS

    @property
    def calibration_rule(self) -> str | None:
        """The rule that calibrates the thresholds; None when they stay hand-set."""
        if self.threshold_rule != "hand":
            return self.threshold_rule
        return "teacher_quantile" if self.calibration_quantile is not None else None

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {list(self.seeds)}")
        if self.teacher_token_budget < 1:
            raise ConfigError(f"teacher_token_budget must be >= 1, got {self.teacher_token_budget}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        self.gen_ssd.validate()
        self.standard_kd.validate()
        validate_rule(self.threshold_rule)
        if self.calibration_quantile is not None:
            validate_quantile(self.calibration_quantile)
        if self.calibration_rule is not None:
            if self.calibration_problems < 1:
                raise ConfigError(f"calibration_problems must be >= 1, got {self.calibration_problems}")
        self.train.validate()
        self.eval.validate()


@dataclass(frozen=True)
class BudgetedData:
    """Trajectories of the problems that fit in the budget."""

    trajectories: list[Trajectory]
    problems: int  # problems within the budget
    teacher_tokens: int  # spent on them (<= budget)
    pool_exhausted: bool  # every problem was used before the budget was: the arm spent less
    seconds: float


def with_seed(config: MethodConfig, seed: int) -> MethodConfig:
    return dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, seed=seed))


def generate_within_budget(config: MethodConfig, problems: list[Problem], teacher, scorer, budget: int,
                           batch_size: int = 32, log: Log | None = None) -> BudgetedData:
    """Run `config` over `problems` in order until `budget` teacher tokens are spent (see module doc)."""
    clock = time.perf_counter()
    kept: list[Trajectory] = []
    meter = BudgetMeter(budget)
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        trajectories = run_method(config, batch, teacher, scorer, batch_size)  # each problem seeded by its id
        by_problem: dict[str, list[Trajectory]] = {}
        for t in trajectories:
            by_problem.setdefault(t.problem_id, []).append(t)
        for problem in batch:
            mine = by_problem.get(problem.problem_id, [])
            if not meter.take(sum(t.teacher_tokens for t in mine)):
                return BudgetedData(kept, meter.taken, meter.spent, False, time.perf_counter() - clock)
            kept.extend(mine)
        if log:
            log(f"{config.method}: {meter.taken} problems, {meter.spent}/{budget} teacher tokens")
    return BudgetedData(kept, meter.taken, meter.spent, True, time.perf_counter() - clock)


def posthoc_from(kd: BudgetedData, keeps: Callable[[Trajectory], bool] = SamplingConfig().keeps) -> BudgetedData:
    """Standard KD's data re-selected by post-hoc filtering; it costs nothing more (the PPLs are stored)."""
    return dataclasses.replace(kd, trajectories=posthoc_reselected(kd.trajectories, keeps), seconds=0.0)


def answer_likelihood_from(kd: BudgetedData, scorer, keeps: Callable[[Trajectory], bool] = SamplingConfig().keeps
                           ) -> BudgetedData:
    """Standard KD's data re-selected by answer likelihood; its seconds are the scoring's."""
    clock = time.perf_counter()
    trajectories = answer_likelihood_reselected(kd.trajectories, scorer, keeps)
    return dataclasses.replace(kd, trajectories=trajectories, seconds=time.perf_counter() - clock)


def data_stats(data: BudgetedData) -> dict:
    """The arm's data columns of `ArmResult`."""
    chosen = [t for t in data.trajectories if t.selected]
    ppls = [t.ppl for t in chosen if t.ppl is not None]
    return dict(problems=data.problems, teacher_tokens=data.teacher_tokens, trajectories=len(data.trajectories),
                selected=len(chosen), accepted_problems=len({t.problem_id for t in chosen}),
                pruned=sum(t.end_reason == "pruned" for t in data.trajectories),
                mean_student_tokens=statistics.fmean(t.student_tokens for t in chosen) if chosen else None,
                mean_ppl=statistics.fmean(ppls) if ppls else None, ppls=ppls,
                pool_exhausted=data.pool_exhausted, generate_seconds=data.seconds)


def as_spec(model: ModelSpec | Path | str) -> ModelSpec:
    """A checkpoint given as a spec keeps its dtype and prompt settings; a bare path gets the defaults."""
    return model if isinstance(model, ModelSpec) else ModelSpec(str(model))


def train_and_evaluate(kind: str, label: str, method: str, seed: int, data: BudgetedData, cold_start: ModelSpec | Path,
                       test: list[Problem], out_dir: Path, config: ComparisonConfig, method_config: dict,
                       log: Log | None = None) -> ArmResult:
    """Fine-tune the cold-start student on the arm's selected trajectories and evaluate it."""
    stats = data_stats(data)
    examples = training_examples(data.trajectories)
    if not examples:  # nothing was learnable within the budget: the student is the cold start
        if log:
            log(f"{label} seed {seed}: no trajectory selected, scoring the cold-start student")
        checkpoint, train_seconds = as_spec(cold_start), 0.0
    else:
        trained = fine_tune(as_spec(cold_start), examples, out_dir, dataclasses.replace(config.train, seed=seed),
                            Reporter(f"{label} seed {seed} training", log) if log else None)
        checkpoint, train_seconds = trained.spec, trained.seconds
    arm = ArmResult(kind=kind, label=label, method=method, seed=seed, train_seconds=train_seconds,
                    checkpoint=checkpoint.name_or_path, config=method_config, **_scores(checkpoint, test, config),
                    **stats)
    if log:
        log(f"{label} seed {seed}: accuracy {arm.accuracy:.3f} from {arm.selected} trajectories of "
            f"{arm.problems} problems ({arm.teacher_tokens} teacher tokens)")
    return arm


def arm_key(kind: str, label: str, seed: int, method_config: dict, config: ComparisonConfig, context: dict) -> str:
    """What an arm's student depends on; an arm stored under the same key is not trained again. The
    test set and the evaluation settings are not in it: an arm scored under others is re-scored
    from its kept checkpoint (`stored_or_rescored`)."""
    blob = json.dumps({"kind": kind, "label": label, "seed": seed, "method": method_config,
                       "budget": config.teacher_token_budget, "batch_size": config.batch_size,
                       "train": dataclasses.asdict(config.train), **context}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluation_of(test: list[Problem], config: ComparisonConfig) -> dict:
    """What an arm's scores depend on besides its student: the test problems and how they are answered."""
    return {"test": problems_digest(test), "n_test": len(test), "settings": config.eval.key()}


def stored_or_rescored(arm: ArmResult | None, key: str, cold_start: ModelSpec | Path, test: list[Problem],
                       config: ComparisonConfig, save: Callable[[str, "ArmResult"], None] | None = None,
                       log: Log | None = None) -> ArmResult | None:
    """A stored arm as it is; re-scored from its checkpoint (and saved under `key`) if the test set or
    the evaluation settings changed since (evaluation is cheap, training is not); None if there is no
    stored arm or its checkpoint is gone."""
    if arm is None or arm.evaluation == evaluation_of(test, config):
        return arm
    if not Path(arm.checkpoint).exists():
        return None
    if log:
        log(f"{arm.label} seed {arm.seed}: re-scoring the stored student under the current test set and settings")
    arm = dataclasses.replace(arm, **_scores(as_spec(cold_start).with_weights(arm.checkpoint), test, config))
    if save:
        save(key, arm)
    return arm


ArmStore = Callable[[str], "ArmResult | None"]  # key -> stored result, or None


def run_comparison(config: ComparisonConfig, cold_start: ModelSpec | Path, pool: list[Problem], test: list[Problem],
                   teacher, scorer, out_dir: Path, context: dict, lookup: ArmStore | None = None,
                   save: Callable[[str, ArmResult], None] | None = None, log: Log | None = None) -> list[ArmResult]:
    """Every method under every seed at the same budget. `context` names the inputs shared by the
    arms (teacher, scorer, cold start, data versions) for the keys; `lookup`/`save` persist arms so
    an interrupted comparison resumes at the first arm not yet stored."""
    config.validate()
    if config.calibration_rule is not None:
        config, pool, context = calibrated_comparison(config, pool, teacher, scorer, context, log)
    if not pool or not test:
        raise ConfigError(f"the comparison needs training and test problems (got {len(pool)} and {len(test)})")
    arms = []
    for seed in config.seeds:
        stream = seed_order(pool, seed)
        kd = with_seed(config.standard_kd, seed)
        # Standard KD's samples carry per-token PPLs: post-hoc selects by those.
        configs = {"gen_ssd": with_seed(config.gen_ssd, seed), "standard_kd": kd,
                   "posthoc": PostHocConfig(kd.num_candidates, kd.sampling, ppl_normalisation="token")}
        dicts = {m: config_dict(c) for m, c in configs.items()}
        dicts[ANSWER_LIKELIHOOD] = {**dicts["standard_kd"], "method": ANSWER_LIKELIHOOD}
        keys = {m: arm_key("comparison", m, seed, dicts[m], config, context) for m in COMPARISON_METHODS}
        stored = {m: lookup(keys[m]) if lookup else None for m in COMPARISON_METHODS}
        data: dict[str, BudgetedData] = {}
        for method in COMPARISON_METHODS:
            arm = stored_or_rescored(stored[method], keys[method], cold_start, test, config, save, log)
            if arm is not None:
                arms.append(arm)
                if log:
                    log(f"{method} seed {seed}: reusing the stored arm {keys[method]}")
                continue
            if method in KD_RESELECTIONS:
                if "standard_kd" not in data:
                    data["standard_kd"] = generate_within_budget(configs["standard_kd"], stream, teacher, scorer,
                                                                 config.teacher_token_budget, config.batch_size, log)
                keeps = configs["standard_kd"].sampling.keeps
                data[method] = (posthoc_from(data["standard_kd"], keeps) if method == "posthoc"
                                else answer_likelihood_from(data["standard_kd"], scorer, keeps))
            else:
                data[method] = generate_within_budget(configs[method], stream, teacher, scorer,
                                                      config.teacher_token_budget, config.batch_size, log)
            arm = train_and_evaluate("comparison", method, method, seed, data[method], cold_start, test,
                                     out_dir / f"seed{seed}" / method, config, dicts[method], log)
            if save:
                save(keys[method], arm)
            arms.append(arm)
    return arms


def calibrated_comparison(config: ComparisonConfig, pool: list[Problem], teacher, scorer, context: dict,
                          log: Log | None) -> tuple[ComparisonConfig, list[Problem], dict]:
    """Calibrate Gen-SSD's thresholds on the pool's last problems, which then leave the pool."""
    n = config.calibration_problems
    if len(pool) <= n:
        raise ConfigError(f"calibration holds back {n} problems, but the pool has only {len(pool)}: lower "
                          "calibration_problems or store more training problems")
    held_back, pool = pool[-n:], pool[:-n]
    q = CALIBRATION_QUANTILE if config.calibration_quantile is None else config.calibration_quantile
    record, ppls = calibrate(held_back, teacher, scorer, config.gen_ssd, q, config.batch_size, config.calibration_rule)
    if log:
        log(f"calibrated by {record.rule} (quantile {record.quantile}): max_ppl {record.max_ppl}, ppl_ratio {record.ppl_ratio} "
            f"({summary(ppls)})")
    config = dataclasses.replace(config, gen_ssd=calibrated(config.gen_ssd, record))
    return config, pool, {**context, "calibration_held_back": n}


def reference_arm(label: str, checkpoint: ModelSpec | Path, test: list[Problem], config: ComparisonConfig) -> ArmResult:
    """A student scored as it is (the base and the cold-start students): no data, no seed."""
    return ArmResult(kind="reference", label=label, method=label, seed=None, checkpoint=as_spec(checkpoint).name_or_path,
                     **_scores(as_spec(checkpoint), test, config))


def _scores(checkpoint: ModelSpec, test: list[Problem], config: ComparisonConfig) -> dict:
    """The evaluation columns of `ArmResult`: pass@1 of `checkpoint` on `test`, and every answer's grade."""
    clock = time.perf_counter()
    result = evaluate(checkpoint, test, config.eval, config.eval_batch_size,
                      solution_end=config.gen_ssd.sampling.end_rule)
    graded: dict[str, list[bool]] = {}
    for o in result.outputs:  # in sample order per question
        graded.setdefault(o["problem_id"], []).append(bool(o["correct"]))
    return dict(accuracy=result.accuracy, n_test=result.n, n_correct=result.n_correct,
                eval_seconds=time.perf_counter() - clock, graded=graded, evaluation=evaluation_of(test, config))
