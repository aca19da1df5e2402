"""Prompts too long for a model's context, found per problem before generation (on_bad_row: skip)."""

from gen_ssd_dagster.core.engines.prompt_fit import too_long_problems
from gen_ssd_dagster.core.types import Problem


def _problem(i: int, question: str) -> Problem:
    return Problem(dataset="d", problem_id=f"d-{i}", question=question, gold="1")


def test_too_long_problems_names_each_by_the_model_it_overflows(backends):
    teacher, scorer = backends
    problems = [_problem(0, "What is 1+1?"), _problem(1, "Tom has 3 pens. " * 20000), _problem(2, "2+2?")]
    found = too_long_problems(problems, teacher, scorer)
    assert list(found) == ["d-1"] and "teacher tokens, more than the teacher's context of" in found["d-1"]
    assert "student tokens, more than the student's context of" in too_long_problems(problems, scorer)["d-1"]
    # A backend that cannot tell (a served model tokenizes on its server) finds nothing.
    assert too_long_problems(problems, object()) == {}
    assert too_long_problems(problems[:1] + problems[2:], teacher, scorer) == {}
