"""Gen-SSD as a plain library. It imports no Dagster, DuckDB or MLflow and nothing else of this
package: the store, the viewer and the Dagster layer (`gen_ssd_dagster.defs`) are built on it, and
everything it needs (models, problems, settings, a ledger to record into) is handed to it.

Start at `method/selection.py`: the loop in which the teacher proposes K chunks and the student
keeps the one it finds most learnable, or prunes the path. The subpackages:

    method/       the Gen-SSD loop, its knobs, the baselines, threshold calibration
    engines/      teacher and student-scorer backends (transformers, vLLM, OpenAI server), prompts
    data/         benchmarks as Problem records, answer grading, where a solution ends
    training/     supervised fine-tuning
    evaluation/   scoring a model on a benchmark; accuracy with intervals
    experiments/  the budget-matched comparison and the knob sweep
    demo/         the embedded demo world and its small models

The names below are the public API. They load on first use, so `import gen_ssd_dagster.core`
does not import torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    # records and errors
    "Problem": "types", "Trajectory": "types", "Step": "types", "Candidate": "types",
    "GenSSDError": "errors", "ConfigError": "errors", "DataError": "errors", "ModelLoadError": "errors",
    # the method
    "GenSSDConfig": "method.config", "StandardKDConfig": "method.config", "PostHocConfig": "method.config",
    "SamplingConfig": "method.config", "Calibration": "method.config", "config_hash": "method.config",
    "run_gen_ssd": "method.selection", "run_standard_kd": "method.baselines", "run_posthoc": "method.baselines",
    "run_method": "method.registry", "training_examples": "method.registry", "calibrate": "method.calibration",
    # engines
    "ModelSpec": "engines.models", "load_model": "engines.models", "load_tokenizer": "engines.models",
    "TransformersTeacher": "engines.transformers_backend", "TransformersScorer": "engines.transformers_backend",
    "VLLMTeacher": "engines.vllm_backend", "VLLMScorer": "engines.vllm_backend",
    "OpenAITeacher": "engines.openai_backend", "OpenAIScorer": "engines.openai_backend",
    "PromptSettings": "engines.prompts", "Prompter": "engines.prompts",
    # data, training, evaluation
    "DatasetSpec": "data.benchmarks", "BUILTIN_DATASETS": "data.benchmarks", "load_problems": "data.benchmarks",
    "grade": "data.grading", "fine_tune": "training.sft", "TrainConfig": "training.sft",
    "EvalSettings": "evaluation.evaluate", "evaluate": "evaluation.evaluate",
    "pass_at_1": "evaluation.statistics", "paired_difference": "evaluation.statistics",
    # the demo
    "run_demo": "demo.run", "DemoConfig": "demo.run",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
