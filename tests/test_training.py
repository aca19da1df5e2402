import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gen_ssd_dagster.core.demo.models import train_tokenizer
from gen_ssd_dagster.core.errors import ConfigError, GenSSDError
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer
from gen_ssd_dagster.core.engines.prompts import Prompter, format_prompt
from gen_ssd_dagster.core.training.sft import IGNORE, TrainConfig, encode_examples, fine_tune, native_bf16, save_atomically

QUESTION = "Mia has 7 apples. She buys 5 more. How many apples does Mia have now?"
PROMPT = format_prompt(QUESTION)  # the tiny model has no chat template: the plain format
COMPLETION = "7 + 5 = 12\n#### 12"
EXAMPLES = [(QUESTION, COMPLETION), (QUESTION.replace("7", "3"), "3 + 5 = 8\n#### 8")] * 16


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random Llama with a small BPE tokenizer, saved like any checkpoint."""
    tok = train_tokenizer([format_prompt(q) + c for q, c in EXAMPLES], vocab_size=280)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    return save_atomically(LlamaForCausalLM(config), tok, tmp_path_factory.mktemp("base") / "tiny")


def test_prompt_tokens_are_masked(base):
    tok = load_tokenizer(ModelSpec(str(base)))
    [(ids, labels)] = encode_examples(Prompter(tok), [(QUESTION, COMPLETION)], max_length=256)
    p = tok(PROMPT)["input_ids"]
    c = tok(COMPLETION, add_special_tokens=False)["input_ids"]
    assert ids == p + c + [tok.eos_token_id]
    assert labels == [IGNORE] * len(p) + c + [tok.eos_token_id]
    # An empty question is no prompt at all (the demo student's plain-text pretraining).
    [(ids, labels)] = encode_examples(Prompter(tok), [("", COMPLETION)], max_length=256)
    assert ids == labels == c + [tok.eos_token_id]


def test_fine_tune_learns_saves_and_reloads(base, tmp_path):
    reports = []
    config = TrainConfig(epochs=10, learning_rate=1e-2, batch_size=8, warmup_steps=2, log_every=10)
    result = fine_tune(str(base), EXAMPLES, tmp_path / "out", config, progress=reports.append)

    assert result.steps == 40 and result.train_tokens > 0 and result.seconds > 0
    assert set(reports[0]) == {"step", "total_steps", "loss", "tokens_per_s"}
    assert reports[-1]["step"] == 40 and reports[-1]["total_steps"] == 40
    assert reports[-1]["loss"] < 0.5 * reports[0]["loss"]
    assert result.final_loss == reports[-1]["loss"]

    spec = ModelSpec(str(result.path))
    model, tok = load_model(spec), load_tokenizer(spec)
    before = load_model(ModelSpec(str(base)))
    assert not torch.equal(model.model.embed_tokens.weight, before.model.embed_tokens.weight)
    assert tok.get_vocab() == load_tokenizer(ModelSpec(str(base))).get_vocab()
    # the completion was learnt: its loss under the saved model is small
    [(ids, labels)] = encode_examples(Prompter(tok), [EXAMPLES[0]], 256)
    with torch.no_grad():
        after, start = (m(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss for m in (model, before))
    assert after.item() < 0.5 * start.item()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dir left beside it


def test_fine_tune_replaces_existing_checkpoint(base, tmp_path):
    out = tmp_path / "out"
    config = TrainConfig(epochs=0.25, batch_size=8, bf16=True)
    first = fine_tune(base, EXAMPLES[:8], out, config)
    second = fine_tune(ModelSpec(str(base)), EXAMPLES[:8], out, TrainConfig(epochs=0.25, batch_size=8, seed=1))
    assert first.path == second.path == out.resolve() and first.steps == 1
    # bf16 is used only where the CPU has it: emulated bf16 is ~11x slower than float32
    cpu_flags = open("/proc/cpuinfo").read().split()
    assert native_bf16() == ("avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags)
    assert first.precision == ("bf16" if native_bf16() else "fp32") and second.precision == "fp32"
    load_model(ModelSpec(str(out)))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_save_leaves_old_checkpoint_and_no_temp(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")

    class Broken:
        def save_pretrained(self, path):
            (path / "half-written").write_text("x")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomically(Broken(), load_tokenizer(ModelSpec(str(base))), out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["config.json"]


@pytest.mark.parametrize(
    "setting, value",
    [("epochs", 0), ("learning_rate", -1.0), ("batch_size", 0), ("max_length", 1),
     ("weight_decay", -0.1), ("warmup_steps", -1), ("log_every", 0)],
)
def test_bad_config_names_the_setting(base, tmp_path, setting, value):
    with pytest.raises(ConfigError, match=setting):
        fine_tune(base, EXAMPLES, tmp_path / "out", TrainConfig(**{setting: value}))


def test_no_examples_is_a_clear_error(base, tmp_path):
    with pytest.raises(GenSSDError, match="no training examples"):
        fine_tune(base, [], tmp_path / "out", TrainConfig())
    with pytest.raises(GenSSDError, match="max_length"):  # completions cut off entirely
        fine_tune(base, EXAMPLES, tmp_path / "out", TrainConfig(max_length=5))
    assert not (tmp_path / "out").exists()
