"""Tune Gen-SSD's knobs: one arm per knob value, at the comparison's teacher-token budget.

The sweep is one-at-a-time around a base configuration: for each knob, every listed value is run
with the other knobs at their base values (a full grid grows multiplicatively and mostly measures
interactions nobody tunes by hand). Each point is an `ArmResult` of kind "sweep": its accuracy
after fine-tuning, what its data cost in teacher tokens, its prune rate and trajectory PPL.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from gen_ssd_dagster.core.experiments.comparison import (ArmResult, ArmStore, ComparisonConfig, arm_key, calibrated_comparison,
                         generate_within_budget, seed_order, stored_or_rescored, train_and_evaluate, with_seed)
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig, config_dict
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.types import Problem

SAMPLING_KNOBS = {f.name for f in dataclasses.fields(SamplingConfig)} - {"seed"}
GEN_SSD_KNOBS = {f.name for f in dataclasses.fields(GenSSDConfig)} - {"sampling", "calibration"}
KNOBS = sorted(GEN_SSD_KNOBS | SAMPLING_KNOBS)


def parse_value(knob: str, text: str, base: GenSSDConfig):
    """A knob value from text, typed like the base configuration's value of that knob."""
    if knob not in KNOBS:
        raise ConfigError(f"unknown Gen-SSD knob {knob!r}; knobs: {', '.join(KNOBS)}")
    current = getattr(base.sampling if knob in SAMPLING_KNOBS else base, knob)
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return type(current)(text)
    except ValueError:
        raise ConfigError(f"sweep value {text!r} of {knob} is not a {type(current).__name__}") from None


def parse_knobs(specs: list[str], base: GenSSDConfig = GenSSDConfig()) -> dict[str, list]:
    """``["chunk_tokens=8,16,32", "num_candidates=2,4"]`` -> {knob: [typed values]}."""
    knobs: dict[str, list] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise ConfigError(f"a sweep knob is written knob=v1,v2,...; got {spec!r}")
        knobs[name] = [parse_value(name, v.strip(), base) for v in values.split(",") if v.strip()]
    return knobs


def point_config(base: GenSSDConfig, knob: str, value) -> GenSSDConfig:
    if knob in SAMPLING_KNOBS:
        config = dataclasses.replace(base, sampling=dataclasses.replace(base.sampling, **{knob: value}))
    elif knob in ("max_ppl", "ppl_ratio"):  # a hand-set threshold is no longer the calibrated one
        config = dataclasses.replace(base, **{knob: value, "calibration": None})
    else:
        config = dataclasses.replace(base, **{knob: value})
    config.validate()  # a bad value fails here, before any work, naming the knob
    return config


def sweep_points(base: GenSSDConfig, knobs: dict[str, list]) -> list[tuple[str, object, GenSSDConfig]]:
    if not knobs:
        raise ConfigError("the sweep needs at least one knob with values")
    return [(knob, value, point_config(base, knob, value)) for knob, values in knobs.items() for value in values]


def run_sweep(config: ComparisonConfig, knobs: dict[str, list], seed: int, cold_start: ModelSpec | Path,
              pool: list[Problem], test: list[Problem], teacher, scorer, out_dir: Path, context: dict,
              lookup: ArmStore | None = None, save: Callable[[str, ArmResult], None] | None = None,
              log: Callable[[str], None] | None = None) -> list[ArmResult]:
    """Gen-SSD at each knob value (one-at-a-time around `config.gen_ssd`), trained and evaluated."""
    sweep_points(config.gen_ssd, knobs)  # validates every point before any work (calibration included)
    if config.calibration_rule is not None:
        config, pool, context = calibrated_comparison(config, pool, teacher, scorer, context, log)
    points = sweep_points(config.gen_ssd, knobs)
    stream = seed_order(pool, seed)
    arms = []
    by_config: dict[str, ArmResult] = {}  # the base value of every knob is one and the same point
    for knob, value, point in points:
        label = f"{knob}={value}"
        point = with_seed(point, seed)
        key = arm_key("sweep", label, seed, config_dict(point), config, context)
        identity = json.dumps(config_dict(point), sort_keys=True)
        same = by_config.get(identity)
        arm = stored_or_rescored(lookup(key) if lookup else None, key, cold_start, test, config, save, log)
        if arm is None and same is not None:
            arm = dataclasses.replace(same, label=label)
            if save:
                save(key, arm)
        elif arm is None:
            data = generate_within_budget(point, stream, teacher, scorer, config.teacher_token_budget,
                                          config.batch_size, log)
            arm = train_and_evaluate("sweep", label, "gen_ssd", seed, data, cold_start, test,
                                     out_dir / f"seed{seed}" / label.replace("=", "_"), config,
                                     config_dict(point), log)
            if save:
                save(key, arm)
        elif log:
            log(f"{label}: reusing the stored point {key}")
        by_config[identity] = arm
        arms.append(arm)
    return arms
