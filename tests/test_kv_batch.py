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


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _plain_branch_logprobs(model, prefix: list[int], branch: list[int]) -> torch.Tensor:
    return _plain_logprobs(model, prefix + branch, len(branch)) if branch else torch.zeros(0)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_branches_scored_in_one_row_match_plain_forward(tiny_models, attention):
    """K candidates side by side in one row (tree mask) give each candidate's plain-forward log-probs,
    step after step, with an empty candidate, uneven rows, and a dropped row; on either attention."""
    spec = ModelSpec(str(tiny_models[0]))
    model, tok = load_model(spec), load_tokenizer(spec)
    model.set_attn_implementation(attention)
    prompts = [tok("Question: Mia has 7 apples.")["input_ids"], tok("Tom")["input_ids"], tok("x y")["input_ids"]]
    batch = KVBatch(model, prompts, tok.pad_token_id)
    paths = [list(p) for p in prompts]
    steps = [
        ([["9 9 9", "7 + 5 = 12\n", ""], ["x", "8 * 2 = 16\n#### 16", "1"], ["2", "3 3", "4"]], [1, 2, None]),
        ([["12 - 3", "= 9"], ["#### 16", "oops"]], [0, 1]),
        ([["\n#### 9", "#"], ["1 2 3 4 5 6 7", ""]], [0, 0]),
    ]
    for texts, chosen in steps:
        branches = [[_ids(tok, t) for t in row] for row in texts]
        got = batch.score_branches(branches)
        for r, row in enumerate(branches):
            for j, branch in enumerate(row):
                want = _plain_branch_logprobs(model, paths[r], branch)
                assert got[r][j].shape == want.shape
                assert torch.allclose(got[r][j], want, atol=1e-4), (r, j, got[r][j], want)
        batch.keep_branches(chosen)
        paths = [paths[r] + branches[r][c] for r, c in enumerate(chosen) if c is not None]
        assert len(batch) == len(paths)
        assert batch.next_pos.tolist() == [len(p) for p in paths]
    # The cache holds the kept tokens only (plus padding): no rejected candidate's columns are left.
    assert batch.cache.get_seq_length() == batch.mask.shape[1]
    assert batch.mask.sum(1).tolist() == [len(p) for p in paths]


def test_scorer_in_one_row_equals_fanned_out_rows(tiny_models):
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer

    scorer = TransformersScorer(ModelSpec(str(tiny_models[1])))
    questions = ["Mia has 7 apples. She buys 5 more.", "Tom has 12 pears."]
    steps = [([["7 + 5 = 12\n", "12\n", "7 7"], ["12 - 4 = 8\n", "8 * 2", ""]], [0, 2]),
             ([["#### 12", "12 - 3 = 9"], ["= 16\n#### 16", "16"]], [1, None]),
             ([["#### 9", "9"]], [0])]
    one_row, fanned = scorer.start(questions), scorer.start(questions)
    fanned.in_one_row = False
    assert one_row.in_one_row
    for texts, chosen in steps:
        ends = [[t.startswith("####") for t in row] for row in texts]
        a, b = one_row.score(texts, ends), fanned.score(texts, ends)
        for row_a, row_b in zip(a, b):
            assert [s.tokens for s in row_a] == [s.tokens for s in row_b]
            assert [s.nll for s in row_a] == pytest.approx([s.nll for s in row_b], abs=1e-3)
        one_row.accept(chosen)
        fanned.accept(chosen)


def _cache_bytes(batch: KVBatch) -> int:
    storages = {}
    for layer in batch.cache.layers:
        for t in (layer.keys, layer.values):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_dropped_rows_free_their_cache(tiny_models):
    """Memory stays bounded as pruned paths leave: nothing keeps the dropped rows' tensors alive."""
    import gc
    import weakref

    spec = ModelSpec(str(tiny_models[0]))
    model, tok = load_model(spec), load_tokenizer(spec)
    prompt = tok("Question: Mia has 7 apples. She buys 5 more. How many apples?")["input_ids"]
    batch = KVBatch(model, [prompt] * 4, tok.pad_token_id)
    batch.score_branches([[_ids(tok, "7 + 5 = 12\n"), _ids(tok, "12")]] * 4)
    batch.keep_branches([0, 1, None, 0])  # one path pruned while scoring
    before = _cache_bytes(batch)
    old = [weakref.ref(t) for layer in batch.cache.layers for t in (layer._keys, layer._values)]
    batch.select([1])
    gc.collect()
    assert all(ref() is None for ref in old), "a dropped row's cache tensor is still referenced"
    assert _cache_bytes(batch) * 3 <= before, (before, _cache_bytes(batch))


def test_cache_appends_in_place(tiny_models):
    """A step appends into spare room: the buffer is not copied at each forward pass (as torch.cat
    would), and a chosen candidate is moved next to its prefix without reallocating."""
    spec = ModelSpec(str(tiny_models[0]))
    model, tok = load_model(spec), load_tokenizer(spec)
    batch = KVBatch(model, [tok("Question: Mia has 7 apples.")["input_ids"]] * 2, tok.pad_token_id)
    one = torch.tensor([[5], [6]])
    batch.extend(one, torch.ones_like(one))  # the first append makes room
    layer = batch.cache.layers[0]
    buffer = layer._keys.data_ptr()
    assert layer.capacity > layer.get_seq_length()
    batch.extend(one, torch.ones_like(one))
    batch.score_branches([[[7], [8, 9]], [[7, 7], []]])
    batch.keep_branches([1, 0])
    assert layer._keys.data_ptr() == buffer


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids, mask = torch.full((len(rows), width), pad_id), torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
    return ids, mask


def test_merged_and_compacted_batch_computes_what_a_plain_forward_pass_does(tiny_models):
    """A path leaves (its columns go) and a new one joins with a longer prompt (`merge`): the cache
    is never wider than its longest live row, and both rows compute what they compute alone."""
    spec = ModelSpec(str(tiny_models[0]))
    model, tok = load_model(spec), load_tokenizer(spec)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    batch = KVBatch(model, [ids("Question: Mia has 7 apples."), ids("Tom")], tok.pad_token_id)
    batch.extend(*_right_padded([ids("12 - 3 = 9\n")[:4], []], tok.pad_token_id))
    batch.select([1])  # the first path ends
    assert batch.mask.shape[1] == len(ids("Tom"))
    joining = "What is 8 * 2? Tom has 12 pears."
    batch.merge(KVBatch(model, [ids(joining)], tok.pad_token_id))
    assert batch.mask.shape[1] == len(ids(joining))
    tail = [ids(" has 3 pens"), ids(" = 16")]
    got = batch.next_token_logprobs(*_right_padded(tail, tok.pad_token_id))
    for r, prefix in enumerate(["Tom", joining]):
        want = _plain_logprobs(model, ids(prefix) + tail[r], len(tail[r]))
        assert torch.allclose(got[r, : len(tail[r])], want, atol=1e-4), (r, got[r], want)
