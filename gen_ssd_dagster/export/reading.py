"""Reading an exported folder back: the (question, solution) pairs the project's trainer takes,
streamed through `datasets` (one Parquet batch at a time, nothing cached)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def training_pairs(folder: Path, config: str = "default") -> Iterator[tuple[str, str]]:
    """(question, solution text) of every row of `config`, in the folder's order (the trainer prompts
    the question itself, in the student's format; the solution is the assistant turn)."""
    from datasets import load_dataset

    rows = load_dataset(str(folder), config, split="train", streaming=True).select_columns(["question", "completion"])
    for row in rows:
        yield row["question"], row["completion"][-1]["content"]
