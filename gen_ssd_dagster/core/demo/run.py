"""The whole method end to end on the embedded demo world, as a plain library call.

teacher + base student -> cold start (fine-tune on a few Standard-KD samples) -> trajectories by
Gen-SSD, Standard KD and post-hoc filtering -> one distilled student per method -> accuracy of
every student on the demo test split. The Dagster pipeline runs the same steps as assets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.progress import Reporter
from gen_ssd_dagster.core.method.config import GenSSDConfig, PostHocConfig, SamplingConfig, StandardKDConfig
from gen_ssd_dagster.core.data.benchmarks import BUILTIN_DATASETS, load_problems
from gen_ssd_dagster.core.demo.models import DemoModelsConfig, build_demo_models
from gen_ssd_dagster.core.demo.world import write_demo_dataset
from gen_ssd_dagster.core.evaluation.evaluate import evaluate
from gen_ssd_dagster.core.method.registry import run_method, training_examples
from gen_ssd_dagster.core.engines.devices import resolve_device
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.experiments.comparison import DISTILL_TRAIN
from gen_ssd_dagster.core.data.solution_text import ANSWER_LINE
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
from gen_ssd_dagster.core.types import Log, Progress


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run. Defaults fit the 10-minute budget on 2 CPU cores.

    n_train / n_test: demo problems generated for the train and test splits.
    n_cold_start: train problems whose Standard-KD samples teach the student the format.
    n_distill: train problems (disjoint from the cold-start ones) every method generates for.
    cold_start: how the teacher samples the cold start's data (Standard KD, keep the correct ones).
    cold_start_train / distill_train: the fine-tuning of the cold start and of each distilled student.
    device: where every model runs (`ModelSpec.device`): "auto", "cpu", "cuda", "cuda:N".
    """

    seed: int = 0
    n_train: int = 4000  # the comparison's problem pool: Gen-SSD reaches ~2,100 problems at its budget
    n_test: int = 1000  # paired differences over 1,000 questions: SE about 2 points per seed (docs/evaluation.md)
    n_cold_start: int = 64
    n_distill: int = 320
    models: DemoModelsConfig = DemoModelsConfig()
    # The demo world's solutions end with a `#### N` line (its models may write on past it).
    gen_ssd: GenSSDConfig = GenSSDConfig(sampling=SamplingConfig(solution_end="answer_line"))
    standard_kd: StandardKDConfig = StandardKDConfig(sampling=SamplingConfig(solution_end="answer_line"))
    posthoc: PostHocConfig = PostHocConfig(sampling=SamplingConfig(solution_end="answer_line"))
    cold_start: StandardKDConfig = StandardKDConfig(
        num_candidates=2, sampling=SamplingConfig(temperature=0.8, solution_end="answer_line"))
    cold_start_train: TrainConfig = TrainConfig(epochs=3, learning_rate=2e-3, batch_size=16, bf16=True)
    distill_train: TrainConfig = DISTILL_TRAIN
    device: str = "auto"


@dataclass
class DemoResult:
    accuracy: dict[str, float]  # student -> accuracy on the demo test split
    trajectories: dict[str, list] = field(default_factory=dict)  # method -> trajectories
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time


def run_demo(home: str | Path, config: DemoConfig = DemoConfig(), log: Log = print) -> DemoResult:
    home = Path(home)
    resolve_device(config.device, "gen-ssd demo --device")  # before anything is built or loaded

    def spec(path) -> ModelSpec:
        return ModelSpec(str(path), device=config.device)

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now
        log(f"[demo] {name} done in {seconds[name]:.1f}s")

    data_dir = home / "data" / "demo"
    write_demo_dataset(data_dir, config.n_train, config.n_test, config.seed)
    train = load_problems(BUILTIN_DATASETS["demo"]["train"], data_dir=data_dir)
    test = load_problems(BUILTIN_DATASETS["demo"]["test"], data_dir=data_dir)
    cold_problems = train[: config.n_cold_start]
    distill_problems = train[config.n_cold_start : config.n_cold_start + config.n_distill]

    models = build_demo_models(home / "models", config.models, progress=_train_log(log, "demo models"))
    stage("demo models")
    teacher = TransformersTeacher(spec(models.teacher))

    base_scorer = TransformersScorer(spec(models.student))
    cold_data = training_examples(run_method(config.cold_start, cold_problems, teacher, base_scorer))
    log(f"[demo] cold start: {len(cold_data)} correct teacher samples from {len(cold_problems)} problems")
    cold = fine_tune(spec(models.student), cold_data, home / "students" / "cold_start", config.cold_start_train,
                     _train_log(log, "cold start"))
    stage("cold start")

    # The cold-start student is the judge: its perplexity now measures the teacher's format.
    scorer = TransformersScorer(spec(cold.path))
    students = {"base": models.student, "cold_start": cold.path}
    trajectories = {}
    for method_config in (config.gen_ssd, config.standard_kd, config.posthoc):
        method = method_config.method
        trajectories[method] = run_method(method_config, distill_problems, teacher, scorer,
                                          progress=Reporter("[demo]", log, unit="problems"))
        examples = training_examples(trajectories[method])
        log(f"[demo] {method}: {len(examples)} training trajectories, "
            f"{sum(t.teacher_tokens for t in trajectories[method])} teacher tokens")
        stage(f"{method} trajectories")
        result = fine_tune(spec(cold.path), examples, home / "students" / method, config.distill_train,
                           _train_log(log, f"distill {method}"))
        students[method] = result.path
        stage(f"{method} student")

    accuracy = {}
    for name, path in students.items():
        accuracy[name] = evaluate(spec(path), test, solution_end=ANSWER_LINE,
                                  progress=Reporter(f"[demo] evaluating {name}", log, unit="questions")).accuracy
        log(f"[demo] accuracy of {name}: {accuracy[name]:.3f}")
    stage("evaluation")
    return DemoResult(accuracy, trajectories, seconds)


def _train_log(log: Log, what: str) -> Progress:
    return Reporter(f"[demo] {what}", log)
