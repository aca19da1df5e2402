"""Greedy evaluation: the KV-cached batched sampler must decode exactly what transformers does."""

import pytest
import torch

from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings, evaluate
from gen_ssd_dagster.core.data.grading import GRADER_VERSION
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer
from gen_ssd_dagster.core.engines.prompts import format_prompt
from gen_ssd_dagster.core.types import Problem

PROBLEMS = [
    Problem("demo", "demo-0", "Mia has 7 apples. She buys 5 more.", "12"),
    Problem("demo", "demo-1", "Tom has 12 pears.", "12"),
    Problem("demo", "demo-2", "What is 8 * 2? Think.", "16"),
]


def test_batched_greedy_matches_transformers_generate(tiny_models):
    spec = ModelSpec(str(tiny_models[0]))
    result = evaluate(spec, PROBLEMS, batch_size=2, settings=EvalSettings(max_new_tokens=12))
    assert result.n == 3 and 0.0 <= result.accuracy <= 1.0
    assert result.grader_version == GRADER_VERSION
    model, tok = load_model(spec), load_tokenizer(spec)
    for problem, out in zip(PROBLEMS, result.outputs):
        ids = tok(format_prompt(problem.question), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        want = tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
        assert out["completion"] == want


def test_sampled_evaluation_stores_every_answer_and_resumes_from_them(tiny_models, tmp_path):
    """n answers per question at a temperature: each one graded and stored under its sample index,
    pass@1 is their mean, the same seed samples the same answers, and a second run generates nothing."""
    from gen_ssd_dagster.core.evaluation.statistics import pass_at_1
    from gen_ssd_dagster.store import Store
    from gen_ssd_dagster.store.eval_outputs import EvalLedger

    spec = ModelSpec(str(tiny_models[0]))
    settings = EvalSettings(samples=3, temperature=1.0, max_new_tokens=12, seed=7)
    ledger = EvalLedger(Store(tmp_path / "db.duckdb"), "v", "demo", GRADER_VERSION, "sampled")
    result = evaluate(spec, PROBLEMS, settings, batch_size=2, ledger=ledger)
    assert (result.n, len(result.outputs), result.settings) == (3, 9, settings)
    assert sorted((o["problem_id"], o["sample_index"]) for o in result.outputs) == [
        (p.problem_id, i) for p in PROBLEMS for i in range(3)]
    records = [{"question_id": o["problem_id"], "sample_index": o["sample_index"], "correct": o["correct"]}
               for o in result.outputs]
    assert result.accuracy == pytest.approx(pass_at_1(records).estimate)
    # untrained weights at temperature 1: three answers to one question are not all the same text
    assert any(len({o["completion"] for o in result.outputs if o["problem_id"] == p.problem_id}) > 1
               for p in PROBLEMS)
    again = evaluate(spec, PROBLEMS, settings, batch_size=2)
    assert again.outputs == result.outputs  # the seed fixes the samples
    resumed = evaluate(spec, PROBLEMS, settings, batch_size=2, ledger=ledger)
    assert resumed.reused == 3 and resumed.outputs == result.outputs


@pytest.mark.parametrize("settings, named", [
    (EvalSettings(samples=4), "temperature"),
    (EvalSettings(samples=2, temperature=0.6, maj_k=3), "maj_k"),
    (EvalSettings(top_p=0.0), "top_p"),
    (EvalSettings(samples=0), "samples"),
])
def test_bad_evaluation_settings_name_the_setting(settings, named):
    from gen_ssd_dagster.core.errors import ConfigError

    with pytest.raises(ConfigError, match=named):
        evaluate("/nonexistent", PROBLEMS, settings)
