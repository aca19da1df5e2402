"""Run configuration: the core's config dataclasses as Dagster `Config` classes (`derive.derive`:
names, types, defaults and docs come from the dataclasses, never retyped here), plus what only a
run has: which problems, how many, in which batches.

A method has its knobs once, in the core (`GenSSDConfig`, `StandardKDConfig`, `PostHocConfig`);
here each is derived into the run config of its trajectories asset (`GenSSDTrajectoriesConfig`, ...),
which adds which problems to run, and into the experiments' `gen_ssd:`/`standard_kd:` sections. The
class names reach no stored data: run configs are written under op names, and Dagster keys their
schemas by a hash of the fields.

The nesting is the core's: `sampling:` under a method's knobs, `train:` for fine-tuning. Every
class converts back with `to_core()` (`method_config()` for the methods, which fills an empty
`solution_end` with the dataset's own and validates).
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field

from ..core.data.solution_text import SolutionEndName
from ..core.demo.run import DemoConfig
from ..core.evaluation.evaluate import EvalSettings
from ..core.experiments.comparison import ComparisonConfig
from ..core.method.calibration import CALIBRATION_PROBLEMS, CALIBRATION_QUANTILE
from ..core.method.threshold_rules import CalibratedRule
from ..core.method.config import GenSSDConfig, PostHocConfig, SamplingConfig, StandardKDConfig
from ..core.training.sft import TrainConfig
from .derive import CoreConfig, dagster_type, derive
from .datasets import dataset_specs

SolutionEndChoice = dagster_type(SolutionEndName, "solution_end")
DEMO_DEFAULTS = DemoConfig()  # run sizes and training recipes shared with the library demo (`gen-ssd demo`)

_SOLUTION_END = (SolutionEndName | None, None,
                 'where a solution ends besides the end of turn: "eos", "answer_line" (`#### N`) or "boxed"; '
                 "empty = the dataset's own (`solution_end` of its spec: \"answer_line\" for demo, \"eos\" for the rest)")


def _sampling(defaults: SamplingConfig) -> type[CoreConfig]:
    return derive(SamplingConfig, defaults, name="SamplingRun", replace={"solution_end": _SOLUTION_END})


def _method(cls, defaults=None, name: str | None = None) -> type[CoreConfig]:
    """A method's knobs with `sampling:` nested; the calibration record is the pipeline's to fill."""
    return derive(cls, defaults, name=name or f"{cls.__name__}Run", nested={"sampling": _sampling},
                  exclude=("calibration",) if cls is GenSSDConfig else ())




class _Limits(dg.Config):
    max_problems: int | None = Field(default=DEMO_DEFAULTS.n_distill, description="train problems per partition; None = all")
    offset: int = Field(default=DEMO_DEFAULTS.n_cold_start, description="train problems skipped first (the cold start's)")
    batch_size: int = Field(default=16, description="paths in flight (a path that ends gives its slot to the next "
                            "problem), and finished problems per DuckDB commit")
    on_bad_row: Literal["error", "skip"] = Field(
        default="error", description='a question longer than the teacher\'s or student\'s context: "error" fails its '
        'batch; "skip" leaves it out before generation, named in the metadata and the log')


class _Budget(dg.Config):
    teacher_token_budget: int | None = Field(
        default=None, description="teacher tokens the partition's data may cost (rejected candidates and pruned paths "
        "count): problems are taken in the order of `sampling.seed` (the comparison's seed order) while their cost "
        "fits, as `gen-ssd compare` does; None = every problem up to max_problems, in the dataset's order. "
        "`gen-ssd pipeline` on demo sets the tour's (gen_ssd_dagster/tour.py)")


class GenSSDTrajectoriesConfig(_method(GenSSDConfig), _Limits, _Budget):
    """The run config of `gen_ssd_trajectories`: Gen-SSD's knobs (the core's `GenSSDConfig`, `sampling:`
    nested), which problems, and where the thresholds come from."""

    thresholds: Literal["hand-set", "calibrated"] = Field(
        default="hand-set", description='"hand-set": max_ppl and ppl_ratio as written here; "calibrated": both '
        "from the pruning_thresholds asset of the same dataset (recorded with every trajectory)")


class CalibrationRunConfig(dg.Config):
    """Pruning thresholds from the cold-start student's PPLs of the teacher's lines on held-back problems.
    The teacher samples as Gen-SSD does: with the knobs of `gen_ssd_trajectories` in the same run
    (`gen_ssd_of_run`), its defaults when the run has none."""

    rule: dagster_type(CalibratedRule, "rule") = Field(
        default="teacher_quantile", description="how max_ppl and ppl_ratio are read from the student's first-line PPLs and "
        'later-line PPL ratios (docs/thresholds.md): "teacher_quantile", "mode_split" or "median_multiple"')
    quantile: float = Field(default=CALIBRATION_QUANTILE, description="under teacher_quantile, max_ppl and ppl_ratio are "
                            "this quantile of the student's first-line PPLs and later-line PPL ratios")
    max_problems: int = Field(default=CALIBRATION_PROBLEMS, description="held-back train problems the teacher solves")
    offset: int | None = Field(default=None, description="train problems skipped first; None = the dataset's "
                               "last max_problems (the methods take theirs from the front)")


class StandardKDTrajectoriesConfig(_method(StandardKDConfig), _Limits, _Budget):
    """The run config of `standard_kd_trajectories`: Standard KD's knobs (the core's `StandardKDConfig`)
    and which problems. Standard KD: K full teacher samples per problem, keep the correct ones."""


class PostHocTrajectoriesConfig(_method(PostHocConfig), _Limits, _Budget):
    """The run config of `posthoc_trajectories`: post-hoc filtering's knobs (the core's `PostHocConfig`)
    and which problems. Post-hoc: K full samples, keep the correct one of lowest student PPL."""


ColdStartTrain = derive(TrainConfig, DEMO_DEFAULTS.cold_start_train, name="ColdStartTrain")
DistillTrain = derive(TrainConfig, DEMO_DEFAULTS.distill_train, name="DistillTrain")
_TRAIN_HELP = "how the student is fine-tuned (`TrainConfig`)"


class ColdStartConfig(_method(StandardKDConfig, DEMO_DEFAULTS.cold_start, "ColdStartKnobs"), _Limits):
    """The cold start: Standard-KD teacher samples of the first train problems teach the student the format."""

    dataset: str = Field(default="demo", description="train side of this dataset supplies the problems")
    max_problems: int | None = Field(default=DEMO_DEFAULTS.n_cold_start, description="problems sampled for the cold start")
    offset: int = Field(default=0, description="train problems skipped first")
    train: ColdStartTrain = Field(default_factory=ColdStartTrain, description=_TRAIN_HELP)


class DistillConfig(dg.Config):
    """Fine-tune the cold-start student on the trajectories a method selected."""

    partitions: list[str] = Field(default=["demo"], description="dataset partitions whose trajectories to learn")
    train: DistillTrain = Field(default_factory=DistillTrain, description=_TRAIN_HELP)


class EvaluationConfig(derive(EvalSettings, name="EvalSettingsRun")):
    """How every student answers every chosen benchmark."""

    benchmarks: list[str] = Field(default=["demo"], description="test sides to evaluate on")
    max_problems: int | None = Field(default=None, description="problems per benchmark; None = all")
    batch_size: int = Field(default=32, description="questions per generation batch")
    solution_end: SolutionEndChoice | None = Field(default=None, description='"eos", "answer_line" or "boxed"; empty = '
                                                 "each benchmark's own")
    stop_strings: list[str] = Field(default=[], description="texts that end an answer")

    def settings(self) -> EvalSettings:
        """The core settings, checked: a bad value fails here, before any model loads."""
        settings = self.to_core()
        settings.validate()
        return settings


def _experiment(exclude: tuple[str, ...] = ()) -> type[CoreConfig]:
    """The core's ComparisonConfig; its methods' knobs as the trajectories' (`sampling:` nested)."""
    return derive(ComparisonConfig, name="ComparisonRun", exclude=exclude,
                  nested={"gen_ssd": lambda d: _method(GenSSDConfig, d), "standard_kd": lambda d: _method(StandardKDConfig, d)})


class _ExperimentScope(dg.Config):
    """What the comparison and the sweep add to the core's ComparisonConfig: the problem pool and the test."""

    dataset: str = Field(default="demo", description="its train side is the problem pool (stored by `problems`)")
    benchmark: str = Field(default="demo", description="its test side scores every arm (stored by `benchmarks`)")
    pool_offset: int = Field(default=DEMO_DEFAULTS.n_cold_start, description="train problems skipped first (the cold start's)")
    max_pool: int | None = Field(default=None, description="cap on the problem pool; None = every stored one")
    max_test: int | None = Field(default=None, description="test problems; None = all")

    def core(self, seeds: list[int]) -> ComparisonConfig:
        config = self.to_core(seeds=tuple(seeds), gen_ssd=method_config(self.gen_ssd, self.dataset),
                              standard_kd=method_config(self.standard_kd, self.dataset))
        config.validate()
        return config


class ComparisonRunConfig(_experiment(), _ExperimentScope):
    """Gen-SSD vs Standard KD vs post-hoc filtering at an equal teacher-token budget, over seeds."""


class SweepRunConfig(_experiment(exclude=("seeds",)), _ExperimentScope):
    """Gen-SSD at each listed knob value, one knob at a time around `gen_ssd`."""

    seed: int = Field(default=0, description="the one seed of every point")
    knobs: dict[str, list[str]] = Field(
        default={"chunk_tokens": ["4", "8", "16"], "num_candidates": ["2", "4", "8"], "ppl_ratio": ["2", "5", "20"]},
        description="knob -> values; any Gen-SSD knob or temperature/top_p/max_new_tokens")


class ProblemsConfig(dg.Config):
    max_problems: int | None = Field(default=None, description="keep the first N problems; None = all")
    on_bad_row: Literal["error", "skip"] = Field(
        default="error", description='"error": one unreadable row refuses the dataset; "skip": such rows are left '
        "out, counted and named (file, line, why) in the materialization's metadata and the run's log")


def gen_ssd_of_run(run_config: dict, dataset: str = "demo") -> GenSSDConfig:
    """Gen-SSD's knobs as the run configures `gen_ssd_trajectories` (its defaults when it does not),
    checked: what `pruning_thresholds` calibrates for, so the knobs are written once."""
    ops = (run_config or {}).get("ops") or {}
    knobs = (ops.get("gen_ssd_trajectories") or {}).get("config") or {}
    return method_config(GenSSDTrajectoriesConfig(**knobs), dataset)


def solution_end_of(dataset: str, configured: str | None) -> str:
    """The run's `solution_end`, or the dataset's own when the run leaves it empty."""
    if configured:
        return str(configured)  # a choice's member is its value
    sides = dataset_specs().get(dataset, {})
    spec = sides.get("train") or sides.get("test")
    return spec.solution_end if spec else SamplingConfig().solution_end


def method_config(run: CoreConfig, dataset: str = "demo"):
    """The core config of a method's knobs (GenSSDConfig, StandardKDConfig, PostHocConfig), checked;
    an empty `solution_end` becomes `dataset`'s own."""
    sampling = run.sampling.to_core(solution_end=solution_end_of(dataset, run.sampling.solution_end))
    config = run.to_core(sampling=sampling)
    config.validate()
    return config
