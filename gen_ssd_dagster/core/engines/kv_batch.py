"""A batch of growing token sequences whose KV cache is kept between calls.

Gen-SSD extends every path by one chunk per step. Re-encoding prompt + accepted prefix at each
step would cost O(length^2) per path; instead each row's keys/values stay in a `DynamicCache`
and only new tokens are run through the model. Rows grow by different amounts, so padding can sit
anywhere in a row: it is masked out (attention mask 0) and position ids are counted over real
tokens only, which makes a padded row compute exactly what the unpadded sequence would.

`select(rows)` re-indexes the batch: repeating rows fans a prefix out into K candidates without
re-encoding it, and picking rows keeps the accepted candidate's cache as the next prefix. `merge`
appends the rows of a newly encoded batch (a problem taking the slot of a path that ended), and
columns no row attends to any more are dropped, so memory follows the live paths.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


class KVBatch:
    def __init__(self, model: PreTrainedModel, token_ids: list[list[int]], pad_id: int):
        """Encode `token_ids` (one list per row, left-padded here) and keep their cache."""
        self.model = model
        self.pad_id = pad_id
        self.device = model.device
        width = max(len(t) for t in token_ids)
        ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        for i, t in enumerate(token_ids):
            if t:
                ids[i, width - len(t):] = torch.tensor(t)
                mask[i, width - len(t):] = 1
        self.cache = DynamicCache()
        self.mask = torch.zeros((len(token_ids), 0), dtype=torch.long, device=self.device)
        self.next_pos = torch.zeros(len(token_ids), dtype=torch.long, device=self.device)
        self.last_logits = torch.zeros((len(token_ids), model.config.vocab_size), device=self.device)
        self.extend(ids, mask)

    def __len__(self) -> int:
        return self.mask.shape[0]

    @torch.no_grad()
    def extend(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Append `ids` [rows, T] (mask 0 = padding) and return the logits [rows, T, vocab].

        `last_logits` afterwards predicts the token after each row's last real token.
        """
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (self.next_pos[:, None] + mask.cumsum(1) - 1).clamp(min=0)
        attention = torch.cat([self.mask, mask], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        logits = out.logits.float()
        self.cache = out.past_key_values
        self.mask = attention
        n_real = mask.sum(1)
        has_real = n_real > 0
        # Index of each row's last real token (rows are left- or right-padded).
        last_real = torch.where(mask.bool(), torch.arange(mask.shape[1], device=self.device), -1).max(1).values
        rows = torch.nonzero(has_real).squeeze(1)
        if len(rows):
            self.last_logits[rows] = logits[rows, last_real[rows]]
        self.next_pos = self.next_pos + n_real
        return logits

    def select(self, rows: list[int] | torch.Tensor) -> None:
        """Keep only `rows` (repeats allowed), in that order."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        self.cache.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.last_logits = self.last_logits.index_select(0, index)
        self.compact()  # the columns only dropped rows attended to

    def next_token_logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Append `ids` and return log p(ids[t] | everything before) per token [rows, T], 0 at padding."""
        previous = self.last_logits.clone()  # extend() updates it in place
        logits = self.extend(ids, mask)
        predictors = torch.cat([previous[:, None, :], logits[:, :-1, :]], dim=1)
        logprobs = torch.log_softmax(predictors, dim=-1).gather(2, ids.to(self.device)[:, :, None]).squeeze(2)
        return logprobs * mask.to(self.device)

    # ---- paths joining and leaving (continuous batching) ----

    def merge(self, other: "KVBatch") -> None:
        """Append `other`'s rows after these (a new problem taking a free slot). Both are aligned on
        their last column, the narrower padded on the left; keys were rotated at their own positions
        when computed, so moving them to other columns changes nothing."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        mine, theirs = self._layers(), other._layers()
        for layer, (k, v), (k2, v2) in zip(self.cache.layers, mine, theirs):
            layer.keys = torch.cat([_left_pad(k, width, 2), _left_pad(k2, width, 2)])
            layer.values = torch.cat([_left_pad(v, width, 2), _left_pad(v2, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.last_logits = torch.cat([self.last_logits, other.last_logits])
        self.compact()

    def compact(self) -> None:
        """Drop the columns no row attends to (those of paths that left): without it the cache of a
        long session would grow with every path that ever ran in it, not with the live ones."""
        keep = self.mask.bool().any(0)
        if bool(keep.all()):
            return
        columns = torch.nonzero(keep).squeeze(1)
        for layer, (k, v) in zip(self.cache.layers, self._layers()):
            layer.keys, layer.values = k.index_select(2, columns), v.index_select(2, columns)
        self.mask = self.mask.index_select(1, columns)

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` padded with zeros on the left of `dim` to `width`."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
