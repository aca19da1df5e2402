"""The cached, padded batch must compute what a plain unpadded forward pass computes."""

import pytest
import torch

from gen_ssd_dagster.core.engines.kv_batch import KVBatch
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer


def _plain_logprobs(model, ids: list[int], n_last: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return logprobs[-n_last:]


def padded_two_step_logprobs(model, tok) -> tuple[torch.Tensor, list]:
    """Log-probs of a second chunk after a K=2 fan-out and a pick, padding inside every row (as in
    Gen-SSD's loop), and per row (its full unpadded ids, the chunk's length) to check them against."""
    prompts = [tok("Question: Mia has 7 apples.")["input_ids"], tok("Tom")["input_ids"]]
    chunks = [["7 + 5 = 12\n", "12 - 3"], ["x", "8 * 2 = 16\n#### 16"]]
    batch = KVBatch(model, prompts, tok.pad_token_id)
    # Fan out to 2 candidates per path, keep candidate 1 of path 0 and candidate 0 of path 1.
    batch.select([0, 0, 1, 1])
    cand = [tok(t, add_special_tokens=False)["input_ids"] for t in ["9 9 9", chunks[0][0], chunks[1][0], "2 2"]]
    width = max(map(len, cand))
    ids = torch.full((4, width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, c in enumerate(cand):
        ids[r, : len(c)], mask[r, : len(c)] = torch.tensor(c), 1
    batch.next_token_logprobs(ids, mask)
    batch.select([1, 2])
    second = [tok(chunks[0][1], add_special_tokens=False)["input_ids"], tok(chunks[1][1], add_special_tokens=False)["input_ids"]]
    width = max(map(len, second))
    ids = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, c in enumerate(second):
        ids[r, : len(c)], mask[r, : len(c)] = torch.tensor(c), 1
    got = batch.next_token_logprobs(ids, mask)
    rows = [(prompts[r] + tok(chunks[r][0], add_special_tokens=False)["input_ids"] + second[r], len(second[r]))
            for r in range(2)]
    return got, rows


def test_padded_cached_batch_matches_plain_forward(tiny_models):
    spec = ModelSpec(str(tiny_models[0]))
    model, tok = load_model(spec), load_tokenizer(spec)
    assert model.config._attn_implementation == "sdpa"  # the default kernel, off CUDA
    got, rows = padded_two_step_logprobs(model, tok)
    for r, (full, n) in enumerate(rows):
        want = _plain_logprobs(model, full, n)
        assert torch.allclose(got[r, :n], want, atol=1e-4), (r, got[r], want)
        assert torch.all(got[r, n:] == 0)


def test_sdpa_equals_eager_with_padding_inside_rows(tiny_models):
    """Why eager was forced is not recorded (it came with the first loader); SDPA's masking of
    padding in the middle of a row, with explicit position ids, gives eager's numbers: measured
    max |diff| ~5e-7 on CPU float32."""
    spec = ModelSpec(str(tiny_models[0]))
    tok = load_tokenizer(spec)
    sdpa, _ = padded_two_step_logprobs(load_model(spec), tok)
    eager, _ = padded_two_step_logprobs(load_model(spec, attn_implementation="eager"), tok)
    assert torch.allclose(sdpa, eager, atol=1e-5), (sdpa - eager).abs().max()


def test_sdpa_scorer_selects_what_eager_selects(tiny_models):
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
    from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
    from gen_ssd_dagster.core.method.registry import run_method
    from gen_ssd_dagster.core.types import Problem

    problems = [Problem("demo", f"d{i}", q, "12") for i, q in enumerate(["Mia has 7 apples.", "Tom has 12 pears."])]
    config = GenSSDConfig(chunk_tokens=6, num_candidates=3, suitability="none",
                          sampling=SamplingConfig(temperature=1.0, max_new_tokens=24, seed=5))
    teacher, scorer = TransformersTeacher(ModelSpec(str(tiny_models[0]))), TransformersScorer(ModelSpec(str(tiny_models[1])))
    runs = {}
    for kernel in ("sdpa", "eager"):
        scorer.model = load_model(scorer.spec, attn_implementation=kernel)
        runs[kernel] = run_method(config, problems, teacher, scorer)
    for a, b in zip(runs["sdpa"], runs["eager"]):
        assert [s.chosen for s in a.steps] == [s.chosen for s in b.steps] and a.text == b.text
        nlls = [[c.nll for s in t.steps for c in s.candidates] for t in (a, b)]
        assert nlls[0] == pytest.approx(nlls[1], rel=1e-5)
    assert sum(len(t.steps) for t in runs["sdpa"]) >= 4  # several steps of K=3 were compared
