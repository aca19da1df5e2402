"""Shared fixtures: tiny real transformer models with two DIFFERENT tokenizers, built on the spot.

They are random-weight Llama models (the demo's trained models are tested elsewhere); what these
fixtures guarantee is that every code path runs on real transformers models, saved with
`save_pretrained` and loaded back through the project's own loader.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Checkpoint digests (core/engines/fingerprint.py) memoised for this test session only, never in ~/.cache.
if "GEN_SSD_FINGERPRINT_CACHE" not in os.environ:
    import tempfile

    os.environ["GEN_SSD_FINGERPRINT_CACHE"] = str(Path(tempfile.mkdtemp(prefix="gen-ssd-digests-")) / "digests.sqlite")

CORPUS = [
    "Question: Mia has 7 apples. She buys 5 more. How many apples does Mia have?\nAnswer:\n",
    "7 + 5 = 12\n12 - 3 = 9\n#### 9\n",
    "Tom has 12 pears. He gives away 4 and doubles the rest. How many pears now?\n",
    "12 - 4 = 8\n8 * 2 = 16\n#### 16\n",
] * 20


def data_dir() -> Path:
    """The shared benchmark data: $GEN_SSD_DATA_DIR, else ../shared/data beside the repo.

    Tests that need it skip on a developer machine without it; in CI (CI=true) its absence is an
    error, so a missing data directory can never turn real tests into silent skips."""
    env = os.environ.get("GEN_SSD_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if os.environ.get("CI") == "true" and not path.is_dir():
        raise RuntimeError(f"CI=true but the benchmark data directory {path} does not exist")
    return path


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_runtest_setup(item):
    """`gpu` tests skip, saying why, where torch sees no CUDA device; under GEN_SSD_EXPECT_GPU=1
    (a GPU runner) that is a failure instead, so a broken CUDA install cannot pass as skips."""
    if not item.get_closest_marker("gpu") or _cuda_available():
        return
    import torch

    why = f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__})"
    if os.environ.get("GEN_SSD_EXPECT_GPU") == "1":
        pytest.fail(f"GEN_SSD_EXPECT_GPU=1 but this test {why}", pytrace=False)
    pytest.skip(why)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true on a machine with CUDA, a `gpu` test that skips itself fails: the GPU is
    there, so a skip could only hide a test that did not run."""
    report = yield
    if (report.skipped and item.get_closest_marker("gpu") and os.environ.get("CI") == "true"
            and _cuda_available()):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: a gpu test skipped under CI=true although CUDA is present"
    return report


def build_tiny_model(out: Path, vocab_size: int, hidden: int, layers: int, seed: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """(teacher_dir, student_dir): random tiny Llamas whose tokenizers differ."""
    root = tmp_path_factory.mktemp("tiny_models")
    teacher = build_tiny_model(root / "teacher", vocab_size=300, hidden=64, layers=2, seed=0)
    student = build_tiny_model(root / "student", vocab_size=270, hidden=32, layers=1, seed=1)
    return teacher, student


@pytest.fixture(scope="module")
def backends(tiny_models):
    """(teacher, scorer): the tiny models on the transformers backends."""
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher

    teacher_dir, student_dir = tiny_models
    return TransformersTeacher(ModelSpec(str(teacher_dir))), TransformersScorer(ModelSpec(str(student_dir)))


DEMO_SIZES = {"demo_train": 12, "demo_test": 4, "demo_seed": 0}


@pytest.fixture(scope="session")
def memorizing_teacher(tmp_path_factory, tiny_models):
    """The tiny teacher fine-tuned until it reproduces the demo train solutions (DEMO_SIZES): correct
    answers, so every asset downstream of "keep the correct ones" has data, in about a minute."""
    from gen_ssd_dagster.core.data import benchmarks as core_data
    from gen_ssd_dagster.core.demo.world import write_demo_dataset
    from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune

    root = tmp_path_factory.mktemp("memorizing")
    write_demo_dataset(root, DEMO_SIZES["demo_train"], DEMO_SIZES["demo_test"], DEMO_SIZES["demo_seed"])
    train = core_data.load_problems(core_data.BUILTIN_DATASETS["demo"]["train"], data_dir=root)
    examples = [(p.question, p.solution) for p in train[:8]]  # the ones the tests sample
    config = TrainConfig(epochs=100, learning_rate=3e-3, batch_size=4, warmup_steps=5, bf16=True)
    return fine_tune(tiny_models[0], examples, root / "teacher", config).path


def run_processes(target, arg_tuples: list[tuple], timeout_s: float) -> list[int | None]:
    """Start one spawned process per argument tuple at once, wait for all, return exit codes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in arg_tuples]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    return [p.exitcode for p in procs]
