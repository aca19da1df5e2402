"""Dataset specs and the strict loader: real benchmarks from the shared data dir, custom specs from
configuration, and one clear DataError (file + row + setting) for each kind of bad input."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from gen_ssd_dagster.core.data.benchmarks import (  # noqa: E402
    BUILTIN_DATASETS,
    DatasetSpec,
    SkippedRow,
    dataset_spec_from_dict,
    load_problems,
    load_problems_checked,
)
from gen_ssd_dagster.core.errors import ConfigError, DataError  # noqa: E402
from gen_ssd_dagster.core.data.grading import extract_answer, is_correct  # noqa: E402
from conftest import data_dir  # noqa: E402

DATA_DIR = data_dir()
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no benchmark data at {DATA_DIR}")

EXPECTED_ROWS = {("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math500", "test"): 500,
                 ("aime24", "test"): 30, ("amc23", "test"): 40}


def test_builtin_sides():
    assert set(BUILTIN_DATASETS) == {"demo", "gsm8k", "math500", "aime24", "amc23"}
    assert set(BUILTIN_DATASETS["gsm8k"]) == set(BUILTIN_DATASETS["demo"]) == {"train", "test"}
    for name in ("math500", "aime24", "amc23"):
        assert set(BUILTIN_DATASETS[name]) == {"test"}
    for sides in BUILTIN_DATASETS.values():
        for spec in sides.values():
            spec.validate()


@needs_data
@pytest.mark.parametrize("name, side", sorted(EXPECTED_ROWS))
def test_real_benchmark_loads_and_golds_self_grade(name, side):
    spec = BUILTIN_DATASETS[name][side]
    problems = load_problems(spec, DATA_DIR)
    assert len(problems) == EXPECTED_ROWS[(name, side)]
    assert len({p.problem_id for p in problems}) == len(problems)
    assert all(p.problem_id.startswith(f"{name}-") and p.question.strip() and p.gold for p in problems)
    checked = problems if len(problems) <= 500 else problems[:200]
    not_self = [p.gold for p in checked if not is_correct(p.gold, p.gold)]
    assert not_self == []
    # where a worked solution carries the final answer, our extraction finds an equivalent one
    if name in ("gsm8k", "math500"):
        wrong = [(p.problem_id, p.gold) for p in checked if not is_correct(extract_answer(p.solution), p.gold)]
        assert wrong == []


@needs_data
def test_gold_forms_and_stable_ids():
    gsm = load_problems(BUILTIN_DATASETS["gsm8k"]["test"], DATA_DIR, limit=3)
    assert [p.problem_id for p in gsm] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"] and gsm[0].gold == "18"
    assert gsm[0].solution.endswith("#### 18")
    math = load_problems(BUILTIN_DATASETS["math500"]["test"], DATA_DIR, limit=1)[0]
    assert math.gold == r"\left( 3, \frac{\pi}{2} \right)" and math.problem_id == "math500-test/precalculus/807.json"
    amc = load_problems(BUILTIN_DATASETS["amc23"]["test"], DATA_DIR, limit=1)[0]
    assert amc.gold == "27.0" and amc.problem_id == "amc23-0"
    aime = load_problems(BUILTIN_DATASETS["aime24"]["test"], DATA_DIR)
    assert "025" not in {p.gold for p in aime} and "25" in {p.gold for p in aime}  # "number" is canonical
    a = load_problems(BUILTIN_DATASETS["math500"]["test"], DATA_DIR, limit=5, seed=7)
    b = load_problems(BUILTIN_DATASETS["math500"]["test"], DATA_DIR, limit=5, seed=7)
    assert a == b and len(a) == 5 and a != load_problems(BUILTIN_DATASETS["math500"]["test"], DATA_DIR, limit=5)


# ---------------------------------------------------------------- custom specs by configuration


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_custom_jsonl_spec_from_dict_with_template(tmp_path):
    _write(tmp_path / "mc.jsonl", [
        {"uid": "a", "stem": "What is 2+2?", "choices": "3, 4, 5", "ans": "\\boxed{4}"},
        {"uid": "b", "stem": "What is 3*3?", "choices": "6, 9", "ans": "so \\boxed{9}."},
    ])
    spec = dataset_spec_from_dict({
        "name": "mc", "local_file": "mc.jsonl", "question_template": "{stem}\n\nChoices: {choices}",
        "answer_field": "ans", "answer_format": "boxed", "id_field": "uid",
    })
    problems = load_problems(spec, tmp_path)
    assert [(p.problem_id, p.question, p.gold) for p in problems] == [
        ("mc-a", "What is 2+2?\n\nChoices: 3, 4, 5", "4"),
        ("mc-b", "What is 3*3?\n\nChoices: 6, 9", "9"),
    ]


@pytest.mark.parametrize(
    "d, needle",
    [
        ({"name": "x", "local_file": "f.jsonl", "question_field": "q", "colour": "red"}, "colour"),
        ({"local_file": "f.jsonl", "question_field": "q"}, "name"),
        ({"name": "x", "local_file": "f.jsonl"}, "question_field"),
        ({"name": "x", "local_file": "f.jsonl", "question_field": "q", "question_template": "{q}"}, "question_template"),
        ({"name": "x", "local_file": "f.jsonl", "question_template": "{} and {}"}, "question_template"),
        ({"name": "x", "local_file": "f.jsonl", "question_field": "q", "answer_format": "latex"}, "answer_format"),
        ({"name": "x", "question_field": "q"}, "local_file"),
        ({"name": "x", "local_file": 3, "question_field": "q"}, "local_file"),
    ],
)
def test_bad_spec_is_a_config_error_naming_the_setting(d, needle):
    with pytest.raises(ConfigError, match=needle):
        dataset_spec_from_dict(d)


# ---------------------------------------------------------------- bad input: one clear DataError

GOOD = {"question": "Tom has 3 pens and buys 2. How many?", "answer": "3 + 2 = 5\n#### 5", "id": 1}
SPEC = DatasetSpec(name="t", local_file="bad.jsonl", question_field="question", answer_format="gsm8k", id_field="id")


def _row(i, **change):
    r = dict(GOOD, id=i, **change)
    return {k: v for k, v in r.items() if v is not None}


@pytest.mark.parametrize(
    "third_row, needles",
    [
        ('{"question": "oops", "answer": ', ["malformed JSON"]),
        ('["question", "answer"]', ["JSON object"]),
        (_row(3, question=None), ["'question'", "question_field", "['answer', 'id']"]),
        (_row(3, answer=None), ["'answer'", "answer_field", "['question', 'id']"]),
        (_row(3, question="   \n"), ["question is empty", "question_field"]),
        (_row(3, answer="3 + 2 = 5, answer 5"), ["'####", "answer_format 'gsm8k'"]),
        (_row(3, answer=5), ["field 'answer' is a number but a string on line 1"]),
        (_row(2), ["repeats", "id_field"]),
    ],
)
def test_bad_row_names_file_line_and_setting(tmp_path, third_row, needles):
    _write(tmp_path / "bad.jsonl", [_row(1), _row(2), third_row])
    with pytest.raises(DataError) as e:
        load_problems(SPEC, tmp_path)
    msg = str(e.value)
    assert "bad.jsonl" in msg and "line 3" in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_non_utf8_bytes(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(
        (json.dumps(_row(1)) + "\n").encode() + b'{"question": "caf\xe9?", "answer": "#### 1"}\n'
    )
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not UTF-8"):
        load_problems(SPEC, tmp_path)


def test_line_numbers_count_blank_lines(tmp_path):
    _write(tmp_path / "bad.jsonl", [_row(1), "", _row(2, answer="no hashes")])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3"):
        load_problems(SPEC, tmp_path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_file_with_zero_rows(tmp_path, content):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(DataError, match=r"bad\.jsonl.*no rows"):
        load_problems(SPEC, tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"bad\.jsonl.*not found.*local_file"):
        load_problems(SPEC, tmp_path)


def test_bad_number_and_boxed_answers(tmp_path):
    _write(tmp_path / "bad.jsonl", [_row(1, answer="12"), _row(2, answer="twelve")])
    with pytest.raises(DataError, match=r"line 2.*answer_format 'number'"):
        load_problems(dataclasses.replace(SPEC, answer_format="number"), tmp_path)
    with pytest.raises(DataError, match=r"line 1.*answer_format 'boxed'"):
        load_problems(dataclasses.replace(SPEC, answer_format="boxed"), tmp_path)


def test_limit_must_be_positive(tmp_path):
    _write(tmp_path / "bad.jsonl", [_row(1)])
    assert len(load_problems(SPEC, tmp_path, limit=5)) == 1
    with pytest.raises(ConfigError, match="limit"):
        load_problems(SPEC, tmp_path, limit=0)


def test_demo_files_load_with_single_prefix(tmp_path):
    from gen_ssd_dagster.core.demo.world import write_demo_dataset
    from gen_ssd_dagster.core.data.grading import grade

    write_demo_dataset(tmp_path, 6, 3, 0)
    train = load_problems(BUILTIN_DATASETS["demo"]["train"], tmp_path)
    test = load_problems(BUILTIN_DATASETS["demo"]["test"], tmp_path)
    assert len(train) == 6 and len(test) == 3
    assert all(p.problem_id.startswith("demo-") and not p.problem_id.startswith("demo-demo-") for p in train + test)
    assert all(grade(p.solution, p.gold) == (p.gold, True) for p in train)


def test_absolute_local_file_needs_no_data_dir(tmp_path):
    path = _write(tmp_path / "abs.jsonl", [_row(1), _row(2)])
    spec = dataset_spec_from_dict({"name": "abs", "local_file": str(path), "question_field": "question",
                                   "answer_format": "gsm8k"})
    assert [p.problem_id for p in load_problems(spec)] == ["abs-0", "abs-1"]
    with pytest.raises(ConfigError, match="data_dir"):
        load_problems(dataclasses.replace(SPEC, local_file="rel.jsonl"))


def test_golds_with_units_or_words_read_by_configuration(tmp_path):
    """`leading_number` takes the first number of the gold; a correct model answer then grades
    right, where the plain text "9 (apples)" would never equal "9"."""
    _write(tmp_path / "units.jsonl", [
        {"q": "a", "a": "9 (apples)"}, {"q": "b", "a": "$18.00"}, {"q": "c", "a": "3 hours"},
        {"q": "d", "a": "1,200 km"}, {"q": "e", "a": "-2.5 degrees"},
    ])
    spec = dataset_spec_from_dict({"name": "u", "local_file": "units.jsonl", "question_field": "q",
                                   "answer_field": "a", "answer_format": "leading_number"})
    golds = [p.gold for p in load_problems(spec, tmp_path)]
    assert golds == ["9", "18", "3", "1200", "-2.5"]
    assert is_correct(extract_answer("... so she has \\boxed{9}."), golds[0])
    assert is_correct("18", golds[1]) and not is_correct("18", "$18.00 dollars")


def test_answer_regex_picks_the_gold_and_names_a_row_it_misses(tmp_path):
    _write(tmp_path / "re.jsonl", [{"q": "a", "a": "The answer is 42 units."}, {"q": "b", "a": "answer is 7"},
                                   {"q": "c", "a": "no answer here"}])
    base = {"name": "r", "local_file": "re.jsonl", "question_field": "q", "answer_field": "a",
            "answer_format": "number", "answer_regex": r"answer is (\S+?)\.?(?:\s|$)"}
    spec = dataset_spec_from_dict(base)
    with pytest.raises(DataError, match=r"re.jsonl, line 3: .*does not match answer_regex.*got 'no answer here'"):
        load_problems(spec, tmp_path)
    _write(tmp_path / "re.jsonl", [{"q": "a", "a": "The answer is 42 units."}, {"q": "b", "a": "answer is 7"}])
    assert [p.gold for p in load_problems(spec, tmp_path)] == ["42", "7"]
    with pytest.raises(ConfigError, match="answer_regex .* is not a regular expression"):
        dataset_spec_from_dict({**base, "answer_regex": "answer is ("})


def test_solution_end_of_a_dataset(tmp_path):
    assert BUILTIN_DATASETS["demo"]["train"].solution_end == "answer_line"
    assert BUILTIN_DATASETS["gsm8k"]["test"].solution_end == "eos"  # no `#### N` outside the demo world
    with pytest.raises(ConfigError, match="solution_end must be one of"):
        dataset_spec_from_dict({"name": "x", "local_file": "f.jsonl", "question_field": "q", "solution_end": "dot"})


# ---------------------------------------------------------------- on_bad_row


ASDIV = dataset_spec_from_dict({"name": "asdiv", "local_file": "asdiv.jsonl", "question_field": "q",
                                "answer_field": "a", "answer_format": "number"})


def test_on_bad_row_skip_leaves_out_and_names_each_bad_row(tmp_path):
    """ASDiv-style: numeric golds with one name ("Mrs. Hilt") among them, plus a broken line, a
    gold that is not a number and a repeated id: "error" refuses the file at the first, "skip"
    keeps the rest and names each bad row with its line and reason."""
    path = _write(tmp_path / "asdiv.jsonl", [
        {"q": "a", "a": 3}, {"q": "Who has more?", "a": "Mrs. Hilt"}, {"q": "c", "a": 5.0}, '{"q": "d", "a":',
        {"q": "e", "a": 7}, {"q": "f"}, {"q": "g", "a": 9},
    ])
    with pytest.raises(DataError, match=r"asdiv.jsonl, line 4: malformed JSON"):
        load_problems_checked(ASDIV, tmp_path)
    with pytest.raises(ConfigError, match="on_bad_row"):
        load_problems_checked(ASDIV, tmp_path, on_bad_row="ignore")
    loaded = load_problems_checked(ASDIV, tmp_path, on_bad_row="skip")
    assert [(p.problem_id, p.gold) for p in loaded.problems] == [
        ("asdiv-0", "3"), ("asdiv-2", "5"), ("asdiv-4", "7"), ("asdiv-6", "9")]  # ids stay those of the rows
    assert [s.where for s in loaded.skipped] == [f"{path}, line {n}" for n in (4, 2, 6)]
    assert "malformed JSON" in loaded.skipped[0].reason
    assert "field 'a' is a string but a number on line 1 and most rows" in loaded.skipped[1].reason
    assert "missing field 'a' (setting answer_field)" in loaded.skipped[2].reason
    assert load_problems_checked(ASDIV, tmp_path, limit=2, on_bad_row="skip").problems == loaded.problems[:2]


def test_on_bad_row_skip_keeps_the_majority_kind_and_refuses_a_file_of_bad_rows(tmp_path):
    _write(tmp_path / "asdiv.jsonl", [{"q": "a", "a": "Mrs. Hilt"}, {"q": "b", "a": 1}, {"q": "c", "a": 2}])
    loaded = load_problems_checked(ASDIV, tmp_path, on_bad_row="skip")
    assert [p.gold for p in loaded.problems] == ["1", "2"]
    assert loaded.skipped == [SkippedRow(f"{tmp_path / 'asdiv.jsonl'}, line 1", "field 'a' is a string but a number"
                                         " on line 2 and most rows; a field must have one type in every row")]
    _write(tmp_path / "asdiv.jsonl", [{"q": "a", "a": "Mrs. Hilt"}, {"q": "b", "a": "Mr. Tan"}])
    with pytest.raises(DataError, match=r"asdiv.jsonl: every row is bad \(2\); the first, .*line 1: field 'a'"):
        load_problems_checked(ASDIV, tmp_path, on_bad_row="skip")
