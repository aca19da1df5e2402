"""Run configuration: every knob of core/method/config.py as a Dagster `Config`, defaults taken from the
dataclasses themselves (never retyped here), plus the limits of a run.

`method_config()` converts back to the core dataclass, which validates it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import dagster as dg
from pydantic import Field

from ..core.method.calibration import CALIBRATION_PROBLEMS, CALIBRATION_QUANTILE
from ..core.experiments.comparison import ComparisonConfig
from ..core.method.config import GenSSDConfig, PostHocConfig, SamplingConfig, StandardKDConfig
from ..core.demo.run import DemoConfig
from ..core.evaluation.evaluate import EvalSettings
from ..core.training.sft import TrainConfig
from .datasets import dataset_specs

_S, _G, _K, _P = SamplingConfig(), GenSSDConfig(), StandardKDConfig(), PostHocConfig()
_E = EvalSettings()
_D = DemoConfig()  # run sizes and training recipes shared with the library demo (`gen-ssd demo`)
SAMPLING_FIELDS = [f.name for f in dataclasses.fields(SamplingConfig)]
TRAIN_FIELDS = ["epochs", "learning_rate", "batch_size", "max_length", "seed", "bf16"]


class _Sampling(dg.Config):
    temperature: float = Field(default=_S.temperature, description="teacher softmax temperature")
    top_p: float = Field(default=_S.top_p, description="teacher nucleus mass")
    max_new_tokens: int = Field(default=_S.max_new_tokens, description="length cap of one solution")
    seed: int = Field(default=_S.seed, description="seeds the teacher's sampling")
    solution_end: str | None = Field(default=None, description='where a solution ends besides the end of turn: '
                                     '"eos", "answer_line" (`#### N`) or "boxed"; empty = the dataset\'s own '
                                     '(`solution_end` of its spec: "answer_line" for demo, "eos" for the rest)')
    stop_strings: list[str] = Field(default=list(_S.stop_strings), description="texts that end a solution")
    keep: str = Field(default=_S.keep, description='what trains the student: "correct" (the method) or "finished" '
                      "(every solution that ends: no gold answers, or a teacher too weak to be right)")


class _Limits(dg.Config):
    max_problems: int | None = Field(default=_D.n_distill, description="train problems per partition; None = all")
    offset: int = Field(default=_D.n_cold_start, description="train problems skipped first (the cold start's)")
    batch_size: int = Field(default=16, description="problems per generation batch (one DuckDB commit each)")


class GenSSDKnobs(_Sampling):
    """Gen-SSD: chunked teacher proposals, student (cold-start) perplexity selection."""

    chunk_tokens: int = _G.chunk_tokens
    snap_to_line: bool = _G.snap_to_line
    num_candidates: int = Field(default=_G.num_candidates, description="K candidates per step")
    ppl_normalisation: str = Field(default=_G.ppl_normalisation, description='"token" or "char"')
    suitability: str = Field(default=_G.suitability, description='"ratio", "absolute" or "none"')
    ppl_ratio: float = _G.ppl_ratio
    max_ppl: float = _G.max_ppl
    prune_final_chunk: bool = Field(default=_G.prune_final_chunk, description="whether a candidate that ends the "
                                    "solution must pass the rule too (False: it passes; grading judges it)")


class GenSSDRunConfig(GenSSDKnobs, _Limits):
    """Gen-SSD: chunked teacher proposals, student (cold-start) perplexity selection."""

    thresholds: Literal["hand-set", "calibrated"] = Field(
        default="hand-set", description='"hand-set": max_ppl and ppl_ratio as written here; "calibrated": both '
        "from the pruning_thresholds asset of the same dataset (recorded with every trajectory)")


class CalibrationRunConfig(GenSSDKnobs):
    """Pruning thresholds from the cold-start student's PPLs of the teacher's lines on held-back problems.
    The teacher samples as Gen-SSD's knobs say (keep them equal to gen_ssd_trajectories')."""

    quantile: float = Field(default=CALIBRATION_QUANTILE, description="max_ppl and ppl_ratio are this quantile of the student's "
                            "first-line PPLs and later-line PPL ratios")
    max_problems: int = Field(default=CALIBRATION_PROBLEMS, description="held-back train problems the teacher solves")
    offset: int | None = Field(default=None, description="train problems skipped first; None = the dataset's "
                               "last max_problems (the methods take theirs from the front)")


class StandardKDKnobs(_Sampling):
    """Standard KD: K full teacher samples per problem, keep the correct ones."""

    num_candidates: int = _K.num_candidates


class StandardKDRunConfig(StandardKDKnobs, _Limits):
    """Standard KD: K full teacher samples per problem, keep the correct ones."""


class PostHocRunConfig(_Sampling, _Limits):
    """Post-hoc filtering: K full samples, keep the correct one of lowest student PPL."""

    num_candidates: int = _P.num_candidates
    ppl_normalisation: str = Field(default=_P.ppl_normalisation, description='"token" or "char"')


def _train(t: TrainConfig) -> type:
    class _Train(dg.Config):
        epochs: float = t.epochs
        learning_rate: float = t.learning_rate
        train_batch_size: int = t.batch_size
        max_length: int = t.max_length
        train_seed: int = t.seed
        bf16: bool = t.bf16

        def train_config(self) -> TrainConfig:
            return TrainConfig(epochs=self.epochs, learning_rate=self.learning_rate, batch_size=self.train_batch_size,
                               max_length=self.max_length, seed=self.train_seed, bf16=self.bf16)

    return _Train


_CS = _D.cold_start_sampling


class ColdStartConfig(_train(_D.cold_start_train), StandardKDRunConfig):
    """The cold start: Standard-KD teacher samples of the first train problems teach the student the format."""

    dataset: str = Field(default="demo", description="train side of this dataset supplies the problems")
    max_problems: int | None = Field(default=_D.n_cold_start, description="problems sampled for the cold start")
    offset: int = 0
    num_candidates: int = 2
    temperature: float = _CS.temperature
    top_p: float = _CS.top_p
    max_new_tokens: int = _CS.max_new_tokens
    seed: int = _CS.seed


class DistillConfig(_train(_D.distill_train)):
    """Fine-tune the cold-start student on the trajectories a method selected."""

    partitions: list[str] = Field(default=["demo"], description="dataset partitions whose trajectories to learn")


class EvaluationConfig(dg.Config):
    benchmarks: list[str] = Field(default=["demo"], description="test sides to evaluate on")
    max_problems: int | None = Field(default=None, description="problems per benchmark; None = all")
    batch_size: int = 32
    max_new_tokens: int = Field(default=_E.max_new_tokens, description="length cap of one answer, in student tokens")
    samples: int = Field(default=_E.samples, description="answers per question; pass@1 is their mean (e.g. 4 on "
                         "MATH-500 at temperature 0.6)")
    temperature: float = Field(default=_E.temperature, description="0 = greedy (then samples must be 1)")
    top_p: float = Field(default=_E.top_p, description="nucleus mass of each sampled answer")
    maj_k: int | None = Field(default=_E.maj_k, description="also report maj@k (k <= samples); None = off")
    seed: int = Field(default=_E.seed, description="seeds the sampled answers")
    solution_end: str | None = Field(default=None, description='"eos", "answer_line" or "boxed"; empty = each '
                                     "benchmark's own")
    stop_strings: list[str] = Field(default=[], description="texts that end an answer")

    def settings(self) -> EvalSettings:
        """The core settings, checked: a bad value fails here, before any model loads."""
        settings = EvalSettings(samples=self.samples, temperature=self.temperature, top_p=self.top_p,
                                max_new_tokens=self.max_new_tokens, maj_k=self.maj_k, seed=self.seed)
        settings.validate()
        return settings


_C = ComparisonConfig()


class _Experiment(_train(_C.train)):
    """What the comparison and the sweep share: the problem pool, the budget, the recipe."""

    dataset: str = Field(default="demo", description="its train side is the problem pool (stored by `problems`)")
    benchmark: str = Field(default="demo", description="its test side scores every arm (stored by `benchmarks`)")
    pool_offset: int = Field(default=_D.n_cold_start, description="train problems skipped first (the cold start's)")
    max_pool: int | None = Field(default=None, description="cap on the problem pool; None = every stored one")
    max_test: int | None = Field(default=None, description="test problems; None = all")
    teacher_token_budget: int = Field(default=_C.teacher_token_budget,
                                      description="teacher tokens each arm may spend on its training data")
    batch_size: int = Field(default=_C.batch_size, description="problems per generation batch")
    eval_max_new_tokens: int = Field(default=_C.eval_max_new_tokens, description="length cap of one test answer")
    eval_samples: int = Field(default=_C.eval_samples, description="test answers per question (pass@1 is their mean)")
    eval_temperature: float = Field(default=_C.eval_temperature, description="0 = greedy (then eval_samples must be 1)")
    eval_top_p: float = Field(default=_C.eval_top_p, description="nucleus mass of each sampled test answer")
    calibration_quantile: float | None = Field(
        default=_C.calibration_quantile, description="None = gen_ssd's max_ppl and ppl_ratio as set; a value in "
        "(0, 1) derives both from that quantile of the cold-start student's PPLs of the teacher's lines")
    calibration_problems: int = Field(default=_C.calibration_problems,
                                      description="pool problems held back for the calibration")
    gen_ssd: GenSSDKnobs = Field(default_factory=GenSSDKnobs, description="Gen-SSD's knobs")
    standard_kd: StandardKDKnobs = Field(default_factory=StandardKDKnobs,
                                         description="Standard KD's knobs (post-hoc filters its samples)")

    def core(self, seeds: list[int]) -> ComparisonConfig:
        config = ComparisonConfig(
            seeds=tuple(seeds), teacher_token_budget=self.teacher_token_budget, batch_size=self.batch_size,
            gen_ssd=method_config(self.gen_ssd, GenSSDConfig, self.dataset),
            standard_kd=method_config(self.standard_kd, StandardKDConfig, self.dataset),
            train=self.train_config(), eval_max_new_tokens=self.eval_max_new_tokens, eval_samples=self.eval_samples,
            eval_temperature=self.eval_temperature, eval_top_p=self.eval_top_p,
            calibration_quantile=self.calibration_quantile, calibration_problems=self.calibration_problems)
        config.validate()
        return config


class ComparisonRunConfig(_Experiment):
    """Gen-SSD vs Standard KD vs post-hoc filtering at an equal teacher-token budget, over seeds."""

    seeds: list[int] = Field(default=list(_C.seeds), description="one arm per method per seed")


class SweepRunConfig(_Experiment):
    """Gen-SSD at each listed knob value, one knob at a time around `gen_ssd`."""

    seed: int = 0
    knobs: dict[str, list[str]] = Field(
        default={"chunk_tokens": ["4", "8", "16"], "num_candidates": ["2", "4", "8"], "ppl_ratio": ["2", "5", "20"]},
        description="knob -> values; any Gen-SSD knob or temperature/top_p/max_new_tokens")


class ProblemsConfig(dg.Config):
    max_problems: int | None = Field(default=None, description="keep the first N problems; None = all")


def solution_end_of(dataset: str, configured: str | None) -> str:
    """The run's `solution_end`, or the dataset's own when the run leaves it empty."""
    if configured:
        return configured
    sides = dataset_specs().get(dataset, {})
    spec = sides.get("train") or sides.get("test")
    return spec.solution_end if spec else SamplingConfig().solution_end


def method_config(run: dg.Config, cls, dataset: str = "demo"):
    """The core dataclass `cls` (GenSSDConfig, StandardKDConfig, PostHocConfig) from run config;
    an empty `solution_end` becomes `dataset`'s own."""
    values = run.model_dump() if hasattr(run, "model_dump") else dict(run)
    values["solution_end"] = solution_end_of(dataset, values.get("solution_end"))
    values["stop_strings"] = tuple(values.get("stop_strings") or ())
    sampling = SamplingConfig(**{k: values[k] for k in SAMPLING_FIELDS})
    own = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name not in ("sampling", "calibration")}
    config = cls(sampling=sampling, **own)
    config.validate()
    return config
