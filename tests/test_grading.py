"""Answer extraction rules and math-verify grading, including the timeout guard off the main thread."""

from __future__ import annotations

import logging
import threading

import pytest

from gen_ssd_dagster.core.data.grading import GRADER_VERSION, extract_answer, grade, is_correct

PATHOLOGICAL = r"10^{10^{10^{10}}}"  # sympy tries to build this integer


@pytest.mark.parametrize(
    "text, expected",
    [
        # GSM8K `####` line wins over everything else, commas and `$` cleaned
        ("48/2 = 24 clips.\n#### 72", "72"),
        ("so \\boxed{5}\n#### 1,234", "1234"),
        ("#### $18.", "18"),
        ("#### -3.5\nsome trailing talk 99", "-3.5"),
        # last \boxed{}, nested braces
        (r"first \boxed{1} then $\boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{1{,}000}", "1000"),
        (r"\boxed{(1,2)}", "(1,2)"),  # a tuple is not a thousands number
        (r"\boxed{} and 7", "7"),  # an empty box is skipped
        # last number
        ("The answer is -3.5.", "-3.5"),
        ("She paid 1,234,567 dollars in total", "1234567"),
        ("between 3 and .5", ".5"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("27", "27.0"),
        ("27.0", "27"),
        ("14/3", r"\frac{14}{3}"),
        (r"\frac{14}{3}", r"\frac{14}{3}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
        ("0.5", r"\frac12"),
        ("25", "025"),
        (r"$\sqrt{2}/2$", r"\frac{\sqrt{2}}{2}"),
        (r"\text{(C)}", r"\text{(C)}"),
    ],
)
def test_equivalent_forms_are_correct(pred, gold):
    assert is_correct(pred, gold)


@pytest.mark.parametrize(
    "pred, gold",
    [("28", "27.0"), (r"\frac{14}{5}", r"\frac{14}{3}"), (r"\left( 3, \pi \right)", r"\left( 3, \frac{\pi}{2} \right)"),
     (None, "3"), ("", "3"), ("3", "")],
)
def test_wrong_answers_are_incorrect(pred, gold):
    assert is_correct(pred, gold) is False


def test_grade_extracts_then_grades():
    assert grade("so the total is $\\boxed{\\frac{28}{6}}$", r"\frac{14}{3}") == (r"\frac{28}{6}", True)
    assert grade("Natalia sold 72 clips.\n#### 71", "72") == ("71", False)
    assert grade("I don't know", "72") == (None, False)


def test_pathological_input_is_bounded_in_a_worker_thread(caplog, monkeypatch):
    """The guard, seen by what it does: the answer is counted incorrect, the timeout is logged, the
    worker still computing is killed (SIGKILL, not a crash of its own) and never lent again."""
    import signal

    from gen_ssd_dagster.core.data import grading

    is_correct("1", "1")  # a warm worker in the pool
    lent = []
    borrow = grading._borrow
    monkeypatch.setattr(grading, "_borrow", lambda: lent.append(borrow()) or lent[-1])
    result = {}

    with caplog.at_level(logging.WARNING, logger="gen_ssd_dagster.core.data.grading"):
        th = threading.Thread(target=lambda: result.update(ok=is_correct(PATHOLOGICAL, "5", timeout_s=1.0)))
        th.start()
        th.join(timeout=120)  # a net against a hang, not a measure: the guard's own timeout is 1 s
    assert not th.is_alive(), "grading hung in a non-main thread"
    assert result["ok"] is False
    assert "grading timed out" in caplog.text and "died" not in caplog.text
    stuck = lent[0]
    assert stuck.proc.returncode == -signal.SIGKILL  # killed by the guard while computing
    assert stuck not in grading._pool
    # the grader recovers: a fresh worker serves the next call, in a thread too
    out = []
    th = threading.Thread(target=lambda: out.append(is_correct("27", "27.0")))
    th.start()
    th.join(timeout=60)
    assert out == [True]
    assert lent[1] is not stuck and lent[1].proc.poll() is None


def test_concurrent_threads_get_their_own_answers():
    cases = [(str(i), str(i), True) for i in range(2)] + [(str(i), str(i + 1), False) for i in range(2)]
    got: dict[int, bool] = {}

    def work(k, pred, gold):
        got[k] = is_correct(pred, gold)

    threads = [threading.Thread(target=work, args=(k, p, g)) for k, (p, g, _) in enumerate(cases)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert got == {k: want for k, (_, _, want) in enumerate(cases)}


def test_grader_version_names_math_verify():
    assert GRADER_VERSION and "math-verify-" in GRADER_VERSION and "extract-v" in GRADER_VERSION
