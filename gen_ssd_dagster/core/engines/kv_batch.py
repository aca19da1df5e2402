"""A batch of growing token sequences whose KV cache is kept between calls.

Gen-SSD extends every path by one chunk per step. Re-encoding prompt + accepted prefix at each
step would cost O(length^2) per path; instead each row's keys/values stay in a cache and only new
tokens are run through the model. Rows grow by different amounts, so padding can sit anywhere in a
row: it is masked out (attention mask 0) and position ids are counted over real tokens only, which
makes a padded row compute exactly what the unpadded sequence would.

Long traces (4k-16k tokens) need a step whose cost does not grow with the prefix:
* the cache appends in place (`GrowingLayer`: a buffer with spare room), where transformers'
  `DynamicLayer` copies the whole cache at every forward pass (`torch.cat`);
* `score_branches` scores K candidates of one path in ONE row, laid out one after another, with a
  4D attention mask in which each candidate sees the row's prefix and itself only (tree attention;
  positions restart per candidate); `keep_branches` then moves the accepted candidate's keys/values
  next to the prefix (a copy of the chunk, not of the prefix) and drops the others' columns.
  Fanning the row out into K rows (`select` with repeats) copies the prefix K times per step.

`select(rows)` re-indexes the batch: repeating rows fans a prefix out into K rows (the teacher's
candidates really diverge, so it needs K rows), and picking fewer rows drops paths, freeing their
memory. `merge` appends the rows of a newly encoded batch (a problem taking the slot of a path that
ended), and columns no row attends to any more are dropped, so memory follows the live paths.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

_SPARE = 1.5  # a full buffer grows to this times its size: appends cost O(1) amortised per token


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that appends in place into a buffer with spare room.

    `keys`/`values` are views of the filled part ([rows, heads, length, dim]); assigning a tensor to
    them (as transformers' `reorder_cache`, `crop`, `batch_select_indices` do) makes it the buffer."""

    def __init__(self, **kwargs):
        self._keys = self._values = None
        self._length = 0
        super().__init__(**kwargs)

    @property
    def keys(self):
        return None if self._keys is None else self._keys[:, :, : self._length]

    @keys.setter
    def keys(self, tensor):
        self._keys, self._length = tensor, (0 if tensor is None else tensor.shape[-2])

    @property
    def values(self):
        return None if self._values is None else self._values[:, :, : self._length]

    @values.setter
    def values(self, tensor):
        self._values = tensor

    @property
    def capacity(self) -> int:
        return 0 if self._keys is None else self._keys.shape[-2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self._length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if end > self.capacity:
            self._regrow(max(end, int(self.capacity * _SPARE)), key_states)
        self._keys[:, :, self._length:end] = key_states
        self._values[:, :, self._length:end] = value_states
        self._length = end
        return self.keys, self.values

    def _regrow(self, capacity: int, like: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """New buffers of `capacity` columns holding the filled part (of rows `index`, if given)."""
        rows = like.shape[0] if index is None else len(index)
        shape = (rows, like.shape[1], capacity, like.shape[3])
        buffers = []
        for old in (self._keys, self._values):
            new = torch.empty(shape, dtype=like.dtype, device=like.device)
            if old is not None and self._length:
                filled = old[:, :, : self._length]
                if index is None:
                    new[:, :, : self._length] = filled
                else:
                    torch.index_select(filled, 0, index, out=new[:, :, : self._length])
            buffers.append(new)
        self._keys, self._values = buffers

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Rows `beam_idx` (repeats allowed), keeping the spare room; the old buffers are released."""
        if self._keys is not None:
            self._regrow(self.capacity, self._keys, beam_idx.to(self._keys.device))

    batch_select_indices = reorder_cache

    def keep_columns(self, start: int, index: torch.Tensor) -> None:
        """Row r's columns `start + index[r]` move to `start, start+1, ...`; the cache then ends at
        `start + index.shape[1]`. Copies the moved columns only."""
        width = index.shape[1]
        for buf in (self._keys, self._values):
            gather = index[:, None, :, None].expand(buf.shape[0], buf.shape[1], width, buf.shape[3])
            buf[:, :, start:start + width] = buf[:, :, start:self._length].gather(2, gather)
        self._length = start + width


def growing_cache(model: PreTrainedModel) -> Cache:
    """A cache of `GrowingLayer`s for a model whose every layer attends to the whole sequence, else
    transformers' own (sliding-window layers keep their own rules)."""
    return DynamicCache() if not full_attention_only(model) else _GrowingCache()


class _GrowingCache(DynamicCache):
    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def full_attention_only(model: PreTrainedModel) -> bool:
    """Whether every layer attends to the whole sequence (no sliding window, no linear attention):
    what `score_branches`' custom mask and `GrowingLayer` assume."""
    config = model.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    if types:
        return all(t == "full_attention" for t in types)
    return getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", True) is False


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
        self.cache = growing_cache(model)
        self.branches: _Branches | None = None  # the last `score_branches` call, until `keep_branches`
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
        self.branches = None
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
        self.branches = None
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

    @torch.no_grad()
    def score_branches(self, branches: list[list[list[int]]]) -> list[list[torch.Tensor]]:
        """log p(token | row so far, earlier tokens of its branch) for each branch of each row:
        `branches[r]` are row r's candidates (token lists), all run in row r in one forward pass
        (see the module docstring). Returns [row][branch] -> [len(branch)] log-probs.

        The batch keeps the branches as padding (invisible) until `keep_branches` picks one."""
        if len(branches) != len(self):
            raise ValueError(f"score_branches got {len(branches)} rows of branches for a batch of {len(self)}")
        rows, start = len(self), self.mask.shape[1]
        lengths = [[len(b) for b in row] for row in branches]
        width = max([sum(row) for row in lengths] + [0])
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        which = torch.full((rows, width), -1, dtype=torch.long)  # branch of each column, -1 = padding
        offset = torch.zeros((rows, width), dtype=torch.long)  # position within its branch
        for r, row in enumerate(branches):
            col = 0
            for j, tokens in enumerate(row):
                ids[r, col:col + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                which[r, col:col + len(tokens)] = j
                offset[r, col:col + len(tokens)] = torch.arange(len(tokens))
                col += len(tokens)
        ids, which, offset = ids.to(self.device), which.to(self.device), offset.to(self.device)
        real = which >= 0
        logprobs = torch.zeros((rows, width), device=self.device)
        last = self.last_logits
        if width:
            logits = self._forward_branches(ids, which, offset, real)
            # A branch's first token is predicted by the row's last logits, the others by the column before.
            first = offset == 0
            prev = (torch.arange(width, device=self.device) - 1).clamp(min=0).expand(rows, width)
            r_idx = torch.arange(rows, device=self.device)[:, None]
            from_logits = logits[r_idx, prev, ids] - torch.logsumexp(logits, -1)[r_idx, prev]
            from_last = last.gather(1, ids) - torch.logsumexp(last, -1)[:, None]
            logprobs = torch.where(first, from_last, from_logits) * real
            ends = [(r, sum(row[:j + 1]) - 1) for r, row in enumerate(lengths) for j in range(len(row))]
            rr, cc = torch.tensor(ends, dtype=torch.long).reshape(-1, 2).T.to(self.device)
            branch_last = logits[rr, cc].clone()  # the logits after each branch (junk where it is empty)
        else:
            branch_last = None
        self.mask = torch.cat([self.mask, torch.zeros((rows, width), dtype=self.mask.dtype, device=self.device)], 1)
        self.branches = _Branches(start, lengths, branch_last)
        out = []
        for r, row in enumerate(lengths):
            cuts = torch.tensor([0] + row).cumsum(0).tolist()
            out.append([logprobs[r, cuts[j]:cuts[j + 1]] for j in range(len(row))])
        return out

    def _forward_branches(self, ids, which, offset, real) -> torch.Tensor:
        """One forward pass of the branch columns with the tree mask; the logits [rows, width, vocab]."""
        rows, width = ids.shape
        causal = torch.ones((width, width), dtype=torch.bool, device=self.device).tril()
        same = (which[:, :, None] == which[:, None, :]) & real[:, None, :] & causal
        same |= torch.eye(width, dtype=torch.bool, device=self.device)  # a padding query sees itself: no empty softmax
        seen = torch.cat([self.mask.bool()[:, None, :].expand(rows, width, -1), same], dim=2)
        dtype = self.model.dtype
        mask = torch.zeros(seen.shape, dtype=dtype, device=self.device).masked_fill_(~seen, torch.finfo(dtype).min)
        out = self.model(
            input_ids=ids,
            attention_mask=mask[:, None],
            position_ids=self.next_pos[:, None] + offset,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        return out.logits.float()

    def keep_branches(self, chosen: list[int | None]) -> None:
        """After `score_branches`: row r keeps its branch `chosen[r]` as the end of its sequence
        (None drops the row); the other branches' keys and values are dropped."""
        if self.branches is None:
            raise RuntimeError("keep_branches needs a score_branches call first (and nothing in between)")
        if len(chosen) != len(self):
            raise ValueError(f"keep_branches got {len(chosen)} choices for a batch of {len(self)} rows")
        b, self.branches = self.branches, None
        kept = [c if c is not None else 0 for c in chosen]
        firsts = [sum(row[:c]) for row, c in zip(b.lengths, kept)]
        lengths = [row[c] if row else 0 for row, c in zip(b.lengths, kept)]
        width = max(lengths + [0])
        index = torch.tensor(firsts, dtype=torch.long)[:, None] + torch.arange(width)
        index = index.clamp(max=max(self.mask.shape[1] - b.start - 1, 0)).to(self.device)
        for layer in self.cache.layers:
            layer.keep_columns(b.start, index)  # a GrowingLayer: branches need a full-attention model
        real = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(self.mask)
        self.mask = torch.cat([self.mask[:, : b.start], real.to(self.device)], dim=1)
        for r, c in enumerate(kept):
            if lengths[r]:  # an empty branch leaves the row's last logits as they were
                self.last_logits[r] = b.last[sum(len(x) for x in b.lengths[:r]) + c]
        self.next_pos = self.next_pos + torch.tensor(lengths, device=self.device)
        if any(c is None for c in chosen):
            self.select([r for r, c in enumerate(chosen) if c is not None])

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
        self.branches = None
        self.compact()

    def compact(self) -> None:
        """Drop the columns no row attends to (those of paths that left): without it the cache of a
        long session would grow with every path that ever ran in it, not with the live ones. Never
        between `score_branches` and `keep_branches`: the candidates sit in columns masked 0."""
        if self.branches is not None:
            return
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


class _Branches:
    """Where `score_branches` put each row's branches: they start at column `start`, one after
    another; `last[i]` = the logits after branch i (flat over rows, then branches)."""

    def __init__(self, start: int, lengths: list[list[int]], last: torch.Tensor | None):
        self.start, self.lengths, self.last = start, lengths, last
