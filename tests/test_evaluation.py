"""Greedy evaluation: the KV-cached batched sampler must decode exactly what transformers does."""

import torch

from gen_ssd_dagster.core.evaluation import evaluate
from gen_ssd_dagster.core.grading import GRADER_VERSION
from gen_ssd_dagster.core.models import ModelSpec, load_model, load_tokenizer
from gen_ssd_dagster.core.prompts import format_prompt
from gen_ssd_dagster.core.types import Problem

PROBLEMS = [
    Problem("demo", "demo-0", "Mia has 7 apples. She buys 5 more.", "12"),
    Problem("demo", "demo-1", "Tom has 12 pears.", "12"),
    Problem("demo", "demo-2", "What is 8 * 2? Think.", "16"),
]


def test_batched_greedy_matches_transformers_generate(tiny_models):
    spec = ModelSpec(str(tiny_models[0]))
    result = evaluate(spec, PROBLEMS, batch_size=2, max_new_tokens=12)
    assert result.n == 3 and 0.0 <= result.accuracy <= 1.0
    assert result.grader_version == GRADER_VERSION
    model, tok = load_model(spec), load_tokenizer(spec)
    for problem, out in zip(PROBLEMS, result.outputs):
        ids = tok(format_prompt(problem.question), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        want = tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
        assert out["completion"] == want
