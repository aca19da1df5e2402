import dataclasses
import json

import pytest

from gen_ssd_dagster.core.demo import models as demo_models
from gen_ssd_dagster.core.demo.models import MARKER, DemoModelsConfig, build_demo_models
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer
from gen_ssd_dagster.core.engines.prompts import format_prompt

TINY = DemoModelsConfig(
    n_teacher_problems=48, n_student_questions=32, teacher_epochs=1, student_epochs=1,
    teacher_hidden=32, teacher_layers=1, teacher_heads=2, student_hidden=16, student_layers=1,
    student_heads=2, batch_size=16,
)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="vocab"):
        DemoModelsConfig(teacher_vocab=300, student_vocab=300).validate()
    with pytest.raises(ConfigError, match="style_weights"):
        DemoModelsConfig(style_weights=(1.0, 0.0)).validate()


@pytest.mark.slow
def test_build_reload_and_cache(tmp_path, monkeypatch):
    reports = []
    built = build_demo_models(tmp_path, TINY, progress=reports.append)
    assert {r["stage"] for r in reports} == {"teacher", "student"}
    assert built.seconds > 0
    assert json.loads((tmp_path / MARKER).read_text())["config"]["n_teacher_problems"] == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MARKER, "teacher", "student"])

    teacher_tok = load_tokenizer(ModelSpec(str(built.teacher)))
    student_tok = load_tokenizer(ModelSpec(str(built.student)))
    teacher, student = load_model(ModelSpec(str(built.teacher))), load_model(ModelSpec(str(built.student)))
    assert student.num_parameters() < teacher.num_parameters()
    # the demo world's text is small: BPE may run out of merges a little before the asked size
    assert TINY.student_vocab - 64 < len(student_tok) <= TINY.student_vocab
    assert len(student_tok) < len(teacher_tok) <= TINY.teacher_vocab
    text = format_prompt("Mia has 17 apples. She buys 5 more.") + "Total: 17 + 5 = 22\n#### 22"
    assert teacher_tok.tokenize(text) != student_tok.tokenize(text)
    for tok in (teacher_tok, student_tok):
        assert tok.decode(tok(text)["input_ids"]) == text  # lossless round trip
        assert "1" in tok.tokenize("17") and "7" in tok.tokenize("17")  # digits one by one
        assert tok.eos_token and tok.pad_token and tok.bos_token

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have skipped training")

    monkeypatch.setattr(demo_models, "fine_tune", no_training)
    again = build_demo_models(tmp_path, TINY)
    assert (again.teacher, again.student, again.seconds) == (built.teacher, built.student, 0.0)
    # another config is another build: the cache must not answer for it
    with pytest.raises(AssertionError, match="cache"):
        build_demo_models(tmp_path, dataclasses.replace(TINY, seed=1))
    assert not (tmp_path / MARKER).exists()  # the interrupted rebuild is not marked done
