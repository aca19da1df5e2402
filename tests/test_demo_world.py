import json
import random
import re

import pytest

from gen_ssd_dagster.core.demo.world import (
    MAX_OPERAND,
    MAX_VALUE,
    STYLES,
    classify_style,
    generate_problems,
    generate_specs,
    render_solution,
    spec_from_question,
    write_demo_dataset,
)
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.data.grading import extract_gsm8k
from gen_ssd_dagster.core.engines.prompts import format_prompt


def test_format_prompt():
    assert format_prompt("What is 1 + 1?") == "Question: What is 1 + 1?\nAnswer:\n"


def test_seeded_determinism_and_ids():
    a, b = generate_problems(50, 7, "train"), generate_problems(50, 7, "train")
    assert a == b
    assert generate_problems(50, 8, "train") != a
    assert a[3].problem_id == "demo-train-000003" and a[0].dataset == "demo"
    assert len({p.question for p in a}) == 50


def test_splits_disjoint():
    train = {p.question for p in generate_problems(2000, 0, "train")}
    test = {p.question for p in generate_problems(500, 0, "test")}
    assert not train & test
    # even with the same seed for both and other seeds, the hash-split keeps them apart
    assert not {p.question for p in generate_problems(500, 1, "test")} & train


def test_values_small_and_non_negative():
    for spec in generate_specs(1000, 3, "train"):
        assert 2 <= len(spec.ops) <= 3
        assert all(0 <= v <= MAX_VALUE for v in spec.values())
        assert all(op.kind in "+-" and 1 <= op.n <= MAX_OPERAND for op in spec.ops)


def test_question_keeps_numbers_in_order():
    for spec in generate_specs(200, 6, "train"):
        numbers = [int(n) for n in re.findall(r"\d+", spec.question)]
        assert numbers == [spec.start, *(op.n for op in spec.ops)]
        # the stepwise solution writes the running value first, then the operand of the k-th sentence
        lines = render_solution(spec, "stepwise").splitlines()
        for k, (line, a, op) in enumerate(zip(lines, spec.values(), spec.ops), 1):
            assert line.startswith(f"Step {k}: {a} {op.kind} {op.n} = ")


def test_every_style_ends_in_gold_and_is_recognisable():
    rng = random.Random(0)
    for p in generate_problems(200, 1, "test"):
        for style in STYLES:
            text = render_solution(p, style, rng)
            assert text.splitlines()[-1] == f"#### {p.gold}"
            assert extract_gsm8k(text) == p.gold
            assert classify_style(text) == style
        assert p.solution == render_solution(p, "stepwise")


def test_styles_really_differ():
    rng = random.Random(0)
    problems = generate_problems(200, 2, "train")
    lines = {s: [len(render_solution(p, s, rng).splitlines()) for p in problems] for s in STYLES}
    chars = {s: [len(render_solution(p, s, rng)) for p in problems] for s in STYLES}
    assert all(c < st for c, st in zip(lines["collapsed"], lines["stepwise"]))
    assert all(v >= st + 3 for v, st in zip(lines["verbose"], lines["stepwise"]))  # opener, restatement, ...
    assert all(v > st + 60 for v, st in zip(chars["verbose"], chars["stepwise"]))
    # verbose is unpredictable: the same problem gets different text from different draws
    p = problems[0]
    assert len({render_solution(p, "verbose", random.Random(i)) for i in range(10)}) > 5
    # ... while stepwise and collapsed are a function of the problem alone
    assert render_solution(p, "collapsed", random.Random(1)) == render_solution(p, "collapsed", random.Random(2))


def test_collapsed_expression_evaluates_to_gold():
    for spec in generate_specs(300, 4, "train"):
        line = render_solution(spec, "collapsed").splitlines()[0]
        expr, result = line.removeprefix("Total: ").split(" = ")
        assert eval(expr) == int(result) == spec.answer  # noqa: S307 - our own digits and + - * ( )


def test_spec_round_trips_through_question():
    for spec in generate_specs(300, 5, "validation"):
        assert spec_from_question(spec.question) == spec


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        generate_problems(3, 0, "dev")
    with pytest.raises(ConfigError, match="style"):
        render_solution(generate_specs(1, 0, "train")[0], "terse")


def test_write_demo_dataset(tmp_path):
    paths = write_demo_dataset(tmp_path, n_train=30, n_test=10, seed=0)
    rows = {s: [json.loads(line) for line in paths[s].read_text().splitlines()] for s in ("train", "test")}
    assert len(rows["train"]) == 30 and len(rows["test"]) == 10
    assert set(rows["train"][0]) == {"question", "answer", "id"}
    assert rows["test"][0]["id"] == "demo-test-000000"
    assert rows["train"][0]["answer"].splitlines()[-1].startswith("#### ")
    assert not {r["question"] for r in rows["train"]} & {r["question"] for r in rows["test"]}
    assert not list(tmp_path.glob("*.tmp*"))


def test_meandering_traces_mix_concise_steps_with_detours():
    """docs/reasoning-world.md: concise steps (the stepwise lines) sit inside long mixed traces."""
    rng = random.Random(0)
    problems = generate_problems(400, 3, "train")
    concise = steps = openers = 0
    for p in problems:
        text = render_solution(p, "meandering", rng)
        stepwise = set(render_solution(p, "stepwise").splitlines()[:-1])
        lines = text.splitlines()[:-1]
        assert set(lines) != stepwise  # never a plain stepwise solution
        assert len(text) > len(render_solution(p, "stepwise"))
        spec_ops = spec_from_question(p.question).ops
        steps += len(spec_ops)
        concise += sum(line in stepwise for line in lines)
        openers += lines[0].endswith(".") and not lines[0][0].isdigit() and "Step" not in lines[0] \
            and " starts with " not in lines[0] and not lines[0].startswith(("First", "Then", "Last"))
    assert 0.28 < concise / steps < 0.42  # P_CONCISE_STEP = 0.35
    assert 0.7 < openers / len(problems) < 0.9  # P_OPENER = 0.8
