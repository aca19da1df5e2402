"""Each model through its own format: chat templates, instructions, the end of a turn, the context.

A tiny real Llama is given a ChatML chat template (as SmolLM2 and Qwen have), so every path that
turns a question into tokens is exercised on a model with a template and on one without.
"""

import dataclasses
import shutil

import pytest
from transformers import AutoConfig

from gen_ssd_dagster.core.engines.prefix_scoring import student_pieces
from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
from gen_ssd_dagster.core.errors import ConfigError, DataError
from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings, evaluate
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer, model_version
from gen_ssd_dagster.core.engines.prompts import Prompter, PromptSettings, format_prompt
from gen_ssd_dagster.core.method.selection import run_gen_ssd
from gen_ssd_dagster.core.data.solution_text import SolutionEnd
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
from gen_ssd_dagster.core.types import Problem

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
QUESTION = "Mia has 7 apples. She buys 5 more. How many apples does Mia have?"


@pytest.fixture(scope="module")
def chat_model(tiny_models, tmp_path_factory):
    """The tiny teacher with ChatML special tokens and a chat template, saved like any checkpoint."""
    out = tmp_path_factory.mktemp("chat") / "model"
    tok, model = load_tokenizer(ModelSpec(str(tiny_models[0]))), load_model(ModelSpec(str(tiny_models[0])))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_plain_prompter_is_the_demo_format(tiny_models):
    tok = load_tokenizer(ModelSpec(str(tiny_models[0])))
    p = Prompter(tok)
    assert not p.uses_chat
    assert p.text(QUESTION) == format_prompt(QUESTION) == f"Question: {QUESTION}\nAnswer:\n"
    assert p.ids(QUESTION) == tok(format_prompt(QUESTION))["input_ids"]
    questions = [QUESTION, "Q?", "Tom has 12 pens. He gives away 3. How many are left?"]
    assert p.ids_of_many(questions) == [p.ids(q) for q in questions]  # one batch, the same ids
    assert p.ids_of_many([]) == []
    assert p.end_id == tok.eos_token_id
    with_instruction = Prompter(tok, PromptSettings(instruction="Think.", system_prompt="Be brief."))
    assert with_instruction.text("Q?") == "Be brief.\n\nQuestion: Q?\n\nThink.\nAnswer:\n"


def test_chat_prompter_uses_the_template_once(chat_model):
    tok = load_tokenizer(ModelSpec(str(chat_model)))
    p = Prompter(tok, PromptSettings(system_prompt="You solve math.", instruction=INSTRUCTION), "student")
    assert p.uses_chat
    text = p.text(QUESTION)
    assert text == (f"<|im_start|>system\nYou solve math.<|im_end|>\n<|im_start|>user\n{QUESTION}\n\n{INSTRUCTION}"
                    "<|im_end|>\n<|im_start|>assistant\n")
    ids = p.ids(QUESTION)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert p.ids_of_many([QUESTION, "Q?"]) == [ids, p.ids("Q?")]
    assert ids.count(tok.bos_token_id) == 0  # the template writes no BOS, so none may be added
    assert p.end_id == tok.convert_tokens_to_ids("<|im_end|>") != tok.eos_token_id
    assert p.stop_ids == {p.end_id, tok.eos_token_id}
    assert p.record()["format"] == "chat" and p.record()["instruction"] == INSTRUCTION
    # The end of turn closes a scored candidate, as it closes a training example.
    assert student_pieces(p, "12", end=True)[-1] == p.end_id
    assert student_pieces(p, "12", end=False) == tok("12", add_special_tokens=False)["input_ids"]


def test_template_modes(chat_model, tiny_models):
    chat_tok, plain_tok = load_tokenizer(ModelSpec(str(chat_model))), load_tokenizer(ModelSpec(str(tiny_models[0])))
    assert Prompter(chat_tok, PromptSettings(chat_template="plain")).text("Q?") == format_prompt("Q?")
    with pytest.raises(ConfigError, match="teacher_chat_template is 'chat' but the teacher's tokenizer has no chat"):
        Prompter(plain_tok, PromptSettings(chat_template="chat"), "teacher")
    with pytest.raises(ConfigError, match="student_chat_template must be one of"):
        Prompter(plain_tok, PromptSettings(chat_template="jinja"), "student")


def test_prompt_settings_are_part_of_the_model_version(chat_model):
    spec = ModelSpec(str(chat_model))
    plain = model_version(spec)
    instructed = model_version(dataclasses.replace(spec, instruction=INSTRUCTION))
    assert "+prompt-" not in plain
    assert instructed.startswith(plain + "+prompt-")
    assert instructed != model_version(dataclasses.replace(spec, instruction="Answer with a number."))
    assert model_version(spec.with_weights(chat_model)) == plain  # same weights, same settings


def test_chat_student_learns_to_end_its_turn_and_answers_through_its_template(chat_model, tmp_path):
    """Fine-tuning prompts through the template and closes with <|im_end|>; the trained model,
    loaded back, is prompted the same way, stops at <|im_end|> and is graded from \\boxed{}."""
    spec = ModelSpec(str(chat_model), instruction=INSTRUCTION)
    examples = [(QUESTION, "7 + 5 = 12. The answer is \\boxed{12}.")] * 8
    trained = fine_tune(spec, examples, tmp_path / "student",
                        TrainConfig(epochs=60, learning_rate=1e-2, batch_size=8, warmup_steps=2))
    assert trained.spec.instruction == INSTRUCTION and trained.spec.name_or_path == str(tmp_path / "student")
    assert load_tokenizer(trained.spec).chat_template == CHATML  # the template travels with the checkpoint

    teacher = TransformersTeacher(trained.spec)
    [[answer]] = teacher.start([QUESTION], 0.0, 1.0, 0).propose(1, [40], stop_at_newline=False)
    assert answer.ended and answer.text == "7 + 5 = 12. The answer is \\boxed{12}."
    assert answer.tokens < 40
    # Without the instruction the same weights see another prompt: the template is what it learnt.
    result = evaluate(trained.spec, [Problem("x", "x-1", QUESTION, "12")], settings=EvalSettings(max_new_tokens=40))
    assert result.outputs[0]["predicted"] == "12" and result.accuracy == 1.0


def _short_context_copy(src, out, context: int):
    shutil.copytree(src, out)
    config = AutoConfig.from_pretrained(out)
    config.max_position_embeddings = context
    config.save_pretrained(out)
    return out


def test_a_path_that_fills_the_teachers_context_is_a_length_cap(tiny_models, tmp_path):
    teacher = TransformersTeacher(ModelSpec(str(_short_context_copy(tiny_models[0], tmp_path / "t", 48))))
    scorer = TransformersScorer(ModelSpec(str(tiny_models[1])))
    config = GenSSDConfig(chunk_tokens=16, snap_to_line=False, num_candidates=2, suitability="none",
                          sampling=SamplingConfig(temperature=1.0, max_new_tokens=500, seed=1))
    [t] = run_gen_ssd([Problem("x", "x-1", QUESTION, "12")], teacher, scorer, config)
    assert t.end_reason in ("length_cap", "finished")
    prompt_tokens = len(teacher.prompter.ids(QUESTION))
    accepted = sum(s.candidates[s.chosen].teacher_tokens for s in t.steps)
    assert prompt_tokens + accepted <= 48
    if t.end_reason == "length_cap":  # the random teacher rarely samples EOS first
        assert accepted == 48 - prompt_tokens


def test_a_path_past_the_students_context_is_a_clear_error(tiny_models, tmp_path):
    teacher = TransformersTeacher(ModelSpec(str(tiny_models[0])))
    scorer = TransformersScorer(ModelSpec(str(_short_context_copy(tiny_models[1], tmp_path / "s", 100))))
    config = GenSSDConfig(chunk_tokens=16, snap_to_line=False, num_candidates=2, suitability="none",
                          sampling=SamplingConfig(temperature=1.0, max_new_tokens=200, seed=1))
    with pytest.raises(DataError, match="more than the student's context of 100 .* lower max_new_tokens"):
        run_gen_ssd([Problem("x", "x-1", QUESTION, "12")], teacher, scorer, config)


@pytest.mark.parametrize("rule, text, ends, cut", [
    (SolutionEnd("eos"), "7 + 5 = 12\n#### 12\nQuestion: next", False, None),
    (SolutionEnd("answer_line"), "7 + 5 = 12\n#### 12\nQuestion: next", True, "7 + 5 = 12\n#### 12\n"),
    (SolutionEnd("answer_line"), "7 + 5 = 12\n#### 12", False, None),  # the line is not complete yet
    (SolutionEnd("boxed"), "So \\boxed{\\frac{1}{2}} it is.\nMore", True, "So \\boxed{\\frac{1}{2}} it is.\n"),
    (SolutionEnd("boxed"), "So \\boxed{\\frac{1}{2", False, None),
    (SolutionEnd("eos", ("</answer>",)), "<answer>12</answer> and on", True, "<answer>12</answer>"),
    (SolutionEnd("answer_line", ("STOP",)), "a STOP b\n#### 1\n", True, "a STOP"),  # the first marker wins
])
def test_solution_end_rules(rule, text, ends, cut):
    assert rule.ends(text) is ends
    assert rule.cut(text) == (cut if cut is not None else text)


def test_solution_end_settings_are_checked():
    with pytest.raises(ConfigError, match="solution_end must be one of"):
        SamplingConfig(solution_end="newline").validate(2)
    with pytest.raises(ConfigError, match="stop_strings must be non-empty"):
        SamplingConfig(stop_strings=("",)).validate(2)
