"""The cached, padded batch must compute what a plain unpadded forward pass computes."""

import torch

from gen_ssd_dagster.core.engines.kv_batch import KVBatch
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer


def _plain_logprobs(model, ids: list[int], n_last: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return logprobs[-n_last:]


def test_padded_cached_batch_matches_plain_forward(tiny_models):
    spec = ModelSpec(str(tiny_models[0]))
    model, tok = load_model(spec), load_tokenizer(spec)
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
    for r in range(2):
        first = tok(chunks[r][0], add_special_tokens=False)["input_ids"]
        full = prompts[r] + first + second[r]
        want = _plain_logprobs(model, full, len(second[r]))
        assert torch.allclose(got[r, : len(second[r])], want, atol=1e-4), (r, got[r], want)
        assert torch.all(got[r, len(second[r]):] == 0)


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
