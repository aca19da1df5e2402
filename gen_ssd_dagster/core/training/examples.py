"""Training examples as a stream: what `fine_tune` reads, cut into batches in bounded memory.

`fine_tune` takes its (question, solution) pairs from an `ExampleSource`: a list in memory, or any
re-iterable source with a length and a digest, such as an exported dataset read from its Parquet
files (`export.reading.ExportedExamples`). Nothing holds the whole set at once: one pass counts the
rows and label tokens (the step count and the loss scale need them), then every epoch reads the
source again, tokenizing `shuffle_buffer` examples at a time. Each such block is shuffled, grouped
by length and cut into batches exactly as one in-memory pass over it would be, so a set that fits
in one block trains exactly as an in-memory list always did; a larger one is shuffled within
blocks, in the source's order of blocks (an export's order: by problem id, not by difficulty).

A block holds token ids as int32 tensors: 16,384 examples of 4k tokens take 256 MiB.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from gen_ssd_dagster.core.engines.prompts import Prompter
from gen_ssd_dagster.core.errors import ConfigError

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips (prompt tokens and padding)
WINDOW_BATCHES = 16  # batches whose examples are sorted by length together (less padding)
TOKENIZE_BATCH = 256  # solutions per tokenizer call


@runtime_checkable
class ExampleSource(Protocol):
    """(question, solution) pairs that can be read more than once, in the same order every time."""

    def __iter__(self) -> Iterator[tuple[str, str]]: ...

    def __len__(self) -> int: ...

    def digest(self) -> str:
        """Changes whenever the pairs or their order do: part of a training run's identity."""
        ...


@dataclass(frozen=True)
class InMemoryExamples:
    pairs: Sequence[tuple[str, str]]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([list(p) for p in self.pairs]).encode()).hexdigest()


def example_source(examples: Sequence[tuple[str, str]] | ExampleSource) -> ExampleSource:
    """A list (or tuple) of pairs, wrapped; a source, as it is."""
    if isinstance(examples, (list, tuple)):
        return InMemoryExamples(examples)
    if isinstance(examples, ExampleSource):
        return examples
    raise ConfigError(f"training examples must be a list of (question, solution) pairs or an ExampleSource "
                      f"(iterable, with len() and digest()), got {type(examples).__name__}")


class Encoder:
    """Tokenizes pairs the way the student is prompted: the question through its format (an empty
    question means no prompt at all: the text is learnt as plain language), the solution closed by
    its end-of-turn token, both cut to `max_length`. A row is (input ids as int32, prompt length):
    the prompt's labels are IGNORE. Pairs whose solution is cut off entirely are dropped and counted
    in `dropped` (they would teach nothing).

    Prompt and solution are tokenized separately, as at generation time, where the prompt is
    tokenized alone and the model continues it."""

    def __init__(self, prompter: Prompter, max_length: int):
        self.prompter, self.max_length, self.dropped = prompter, max_length, 0

    def rows(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[torch.Tensor, int]]:
        if not pairs:
            return []
        tokenizer, end = self.prompter.tokenizer, self.prompter.end_id
        solutions, prompts = [], []
        for i in range(0, len(pairs), TOKENIZE_BATCH):  # a fast tokenizer keeps offsets and strings per token
            part = pairs[i : i + TOKENIZE_BATCH]
            solutions += tokenizer([c for _, c in part], add_special_tokens=False)["input_ids"]
            asked = [q for q, _ in part if q]
            ids = iter(self.prompter.ids_of_many(asked))
            prompts += [next(ids) if q else [] for q, _ in part]
        out = []
        for prompt, solution in zip(prompts, solutions):
            ids = (prompt + solution + [end])[: self.max_length]
            if len(ids) <= max(1, len(prompt)):  # no solution label left past the first token
                self.dropped += 1
                continue
            out.append((torch.tensor(ids, dtype=torch.int32), len(prompt)))
        return out


def labels_of(ids: Sequence[int], prompt_len: int) -> list[int]:
    return [IGNORE] * min(prompt_len, len(ids)) + list(ids[prompt_len:])


def encode_examples(prompter: Prompter, examples: Iterable[tuple[str, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per (question, solution), as `Encoder` makes them (the rows the trainer sees)."""
    encoder = Encoder(prompter, max_length)
    rows = encoder.rows(list(examples))
    if encoder.dropped:
        log.warning("dropped %d examples: no completion token within max_length", encoder.dropped)
    return [(ids.tolist(), labels_of(ids.tolist(), p)) for ids, p in rows]


def blocks(source: ExampleSource, encoder: Encoder, size: int) -> Iterator[list[tuple[torch.Tensor, int]]]:
    """The source's rows, `size` pairs at a time (fewer where pairs were dropped)."""
    pending: list[tuple[str, str]] = []
    for pair in source:
        pending.append(pair)
        if len(pending) == size:
            yield encoder.rows(pending)
            pending = []
    if pending:
        yield encoder.rows(pending)


def count(source: ExampleSource, encoder: Encoder, size: int) -> tuple[int, int]:
    """Rows kept and solution labels (those the loss sees: the first token is never predicted)."""
    rows = labels = 0
    for block in blocks(source, encoder, size):
        rows += len(block)
        labels += sum(len(ids) - max(1, p) for ids, p in block)
    return rows, labels


def block_size(shuffle_buffer: int, batch_size: int) -> int:
    """`shuffle_buffer` rounded up to whole length-sorting windows, so only a pass's last batch is short."""
    window = WINDOW_BATCHES * batch_size
    return max(1, -(-shuffle_buffer // window)) * window


def length_grouped_batches(rows: Sequence, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """One shuffled pass, batched so that similar lengths share a batch (less padding, ~2x faster).

    Examples are sorted by length only within windows of 16 batches, and the batches are then
    shuffled, so the order stays random at the scale of the block.
    """
    perm = torch.randperm(len(rows), generator=gen).tolist()
    window = WINDOW_BATCHES * batch_size
    batches = []
    for i in range(0, len(perm), window):
        part = sorted(perm[i : i + window], key=lambda j: len(rows[j][0]))
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def training_batches(source: ExampleSource, encoder: Encoder, batch_size: int, shuffle_buffer: int,
                     gen: torch.Generator) -> Iterator[list[tuple[torch.Tensor, int]]]:
    """Batches of rows, pass after pass without end (the caller stops at its step count). A source
    that fits in one block is tokenized once and that block reused by every pass."""
    size = block_size(shuffle_buffer, batch_size)
    whole = list(blocks(source, encoder, size)) if len(source) <= size else None
    while True:
        for block in whole if whole is not None else blocks(source, encoder, size):
            for batch in length_grouped_batches(block, batch_size, gen):
                yield [block[i] for i in batch]


def collate(rows: Sequence[tuple[torch.Tensor, int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, labels (IGNORE on prompt and padding) and attention mask."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, prompt) in enumerate(rows):
        ids[i, : len(x)], mask[i, : len(x)] = x, 1
        labels[i, prompt : len(x)] = x[prompt:]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
