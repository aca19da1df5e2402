"""Training from a stream (core/training/examples.py): a set within the shuffle buffer trains as the
in-memory list always did, a larger one never holds more than a block, a resumed run skips into the
stream, and an exported dataset trains the student straight from its Parquet files, in one process or two.
Real tiny models and tokenizers, a real DuckDB store and a real export folder."""

from __future__ import annotations

import pytest
import torch

from gen_ssd_dagster.core.engines.models import ModelSpec, load_tokenizer
from gen_ssd_dagster.core.engines.prompts import Prompter
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.training.examples import (Encoder, block_size, encode_examples, example_source,
                                                     length_grouped_batches, training_batches)
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
from gen_ssd_dagster.export import ExportSettings, export_dataset
from gen_ssd_dagster.export.reading import ExportedExamples, training_pairs
from gen_ssd_dagster.store import Home, Store
from test_crash_resume import _weights
from test_export import KEY, _write

EXAMPLES = [(f"Question: what is {i} + {i % 7}?\nAnswer:\n", f"{i} + {i % 7} = {i + i % 7}\n" * (1 + i % 3)
             + f"#### {i + i % 7}") for i in range(40)]


class CountingSource:
    """A re-iterable source that records how many pairs have been read in the current pass."""

    def __init__(self, pairs):
        self.pairs, self.read = pairs, 0

    def __iter__(self):
        self.read = 0
        for pair in self.pairs:
            self.read += 1
            yield pair

    def __len__(self):
        return len(self.pairs)

    def digest(self):
        return example_source(self.pairs).digest()


def _encoder(student):
    return Encoder(Prompter(load_tokenizer(ModelSpec(str(student)))), 256)


def _index(row, tokenizer) -> int:
    return int(tokenizer.decode(row[0][: row[1]].tolist()).split("what is ")[1].split(" ")[0])


def test_a_set_within_the_buffer_is_batched_as_one_in_memory_pass(tiny_models):
    encoder = _encoder(tiny_models[1])
    rows = encoder.rows(EXAMPLES)
    expected = length_grouped_batches(rows, 4, torch.Generator().manual_seed(3))
    stream = training_batches(example_source(EXAMPLES), encoder, 4, 64, torch.Generator().manual_seed(3))
    got = [next(stream) for _ in expected]
    assert [[r[0].tolist() for r in batch] for batch in got] == [[rows[i][0].tolist() for i in b] for b in expected]


def test_a_larger_set_never_holds_more_than_a_block(tiny_models):
    encoder, source = _encoder(tiny_models[1]), CountingSource(EXAMPLES)
    tokenizer = encoder.prompter.tokenizer
    size = block_size(10, 1)  # batch 1: windows of 16 examples, so blocks of 16
    assert size == 16
    stream = training_batches(source, encoder, 1, 10, torch.Generator().manual_seed(0))
    seen = []
    for _ in range(len(EXAMPLES)):  # one pass
        [row] = next(stream)
        seen.append(_index(row, tokenizer))
        assert source.read <= (len(seen) - 1) // size * size + size  # read ahead by at most one block
    assert sorted(seen) == list(range(len(EXAMPLES)))  # every example once per pass
    for b in range(0, len(EXAMPLES), size):  # shuffled within its block, blocks in the source's order
        assert sorted(seen[b:b + size]) == list(range(b, min(b + size, len(EXAMPLES))))
    assert seen[:size] != sorted(seen[:size])
    second = [_index(next(stream)[0], tokenizer) for _ in range(size)]
    assert sorted(second) == list(range(size)) and second != seen[:size]  # a new pass, a new order


def test_streaming_counts_and_drops_as_the_list(tiny_models, tmp_path):
    """Same steps, token count and weights from a list and from a one-pass-at-a-time source, and a
    solution cut off by max_length is dropped by both."""
    cut = [("x " * 300, "lost")]  # the prompt alone fills max_length
    config = TrainConfig(epochs=1.5, batch_size=4, learning_rate=3e-3, warmup_steps=1, max_length=64)
    a = fine_tune(tiny_models[1], EXAMPLES + cut, tmp_path / "list", config)
    b = fine_tune(tiny_models[1], CountingSource(EXAMPLES + cut), tmp_path / "stream", config)
    assert a.steps == b.steps == 15 and a.train_tokens == b.train_tokens  # ceil(1.5 * 40 / 4)
    wa, wb = _weights(a.path), _weights(b.path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_resumed_stream_skips_to_where_it_stopped(tiny_models, tmp_path):
    """Interrupted after step 25 of 40 (blocks of 16, so mid-block of the second pass), the run
    resumes from its saved step 24 and ends with the uninterrupted run's weights."""
    config = TrainConfig(epochs=1, batch_size=1, shuffle_buffer=16, learning_rate=3e-3, warmup_steps=1, log_every=1)
    whole = fine_tune(tiny_models[1], CountingSource(EXAMPLES), tmp_path / "whole", config)

    def stop(info):
        if info["step"] == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fine_tune(tiny_models[1], CountingSource(EXAMPLES), tmp_path / "cut", config, stop, checkpoint_every_steps=8)
    resumed = fine_tune(tiny_models[1], CountingSource(EXAMPLES), tmp_path / "cut", config, checkpoint_every_steps=8)
    assert resumed.resumed_from_step == 24 and resumed.steps == whole.steps == 40
    wa, wb = _weights(whole.path), _weights(resumed.path)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_what_is_not_a_list_or_source_is_refused(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="ExampleSource"):
        fine_tune(tiny_models[1], (pair for pair in EXAMPLES), tmp_path / "out", TrainConfig())
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        fine_tune(tiny_models[1], EXAMPLES, tmp_path / "out", TrainConfig(shuffle_buffer=0))
    assert not (tmp_path / "out").exists()


@pytest.fixture()
def exported(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    home = Home.resolve(tmp_path / "home").make()
    _write(Store(home.db_path), KEY, [f"p{i}" for i in range(30)])
    return export_dataset(home, KEY, ExportSettings())


def test_an_export_trains_the_student_its_rows_would(tiny_models, tmp_path, exported):
    source = ExportedExamples.of([exported.path], [exported.digest])
    assert len(source) == exported.counts["kept"] > 8
    pairs = list(training_pairs(exported.path))
    assert list(source) == pairs and source.digest() != ExportedExamples.of([exported.path], ["other"]).digest()
    prompter = Prompter(load_tokenizer(ModelSpec(str(tiny_models[1]))))
    assert [r[0] for r in encode_examples(prompter, source, 256)] == [r[0] for r in encode_examples(prompter, pairs, 256)]
    config = TrainConfig(epochs=2, batch_size=4, learning_rate=3e-3, warmup_steps=1)
    a = fine_tune(tiny_models[1], pairs, tmp_path / "list", config)
    b = fine_tune(tiny_models[1], source, tmp_path / "export", config)
    wa, wb = _weights(a.path), _weights(b.path)
    assert a.steps == b.steps and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_an_export_trains_in_two_processes(tiny_models, tmp_path, exported):
    """The launcher hands the source to its processes (pickled: folders and digests, not rows)."""
    source = ExportedExamples.of([exported.path], [exported.digest])
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=3e-3, warmup_steps=1)
    one = fine_tune(tiny_models[1], list(source), tmp_path / "one", config)
    two = fine_tune(tiny_models[1], source, tmp_path / "two", TrainConfig(**{**config.__dict__, "processes": 2}))
    assert two.processes == 2 and two.steps == one.steps
    wa, wb = _weights(one.path), _weights(two.path)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
