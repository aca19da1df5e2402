"""Progress as a person sees it: sentences in logs, bars only in a terminal, never a dict repr."""

import io

import dagster as dg

from gen_ssd_dagster.core.progress import Reporter, sentence


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def training(step: int, total: int = 5000) -> dict:
    return {"step": step, "total_steps": total, "loss": 2.31449, "tokens_per_s": 5300.4}


def test_sentence_of_a_training_report():
    assert sentence("teacher", training(1240)) == "teacher: 1240/5000 steps (24.8%), loss 2.314, 5300 tokens/s"
    assert sentence("teacher", training(1240), left_s=192) == (
        "teacher: 1240/5000 steps (24.8%), loss 2.314, 5300 tokens/s, about 3m12s left")
    assert sentence("teacher", training(5000), left_s=0).endswith("tokens/s")  # done: no time left to speak of


def test_sentence_of_a_count_report():
    assert sentence("gen_ssd/demo", {"done": 32, "total": 320}, "problems") == "gen_ssd/demo: 32/320 problems (10.0%)"
    assert sentence("x", {"done": 1, "total": 3}, "questions", left_s=7320) == "x: 1/3 questions (33.3%), about 2h02m left"


def test_not_a_terminal_gets_plain_lines_without_carriage_returns():
    stream = io.StringIO()
    report = Reporter("cold_start", stream=stream, every_s=0)
    for step in (20, 40, 60):
        report(training(step, 60))
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "cold_start: 20/60 steps (33.3%), loss 2.314, 5300 tokens/s"
    assert lines[-1].startswith("cold_start: 60/60 steps (100.0%)") and len(lines) == 3


def test_lines_are_periodic_first_and_last_always():
    said = []
    report = Reporter("evaluation", said.append, unit="questions", stream=io.StringIO(), every_s=3600)
    for done in range(10, 101, 10):
        report({"done": done, "total": 100})
    assert [s.split(":")[1].split()[0] for s in said] == ["10/100", "100/100"]


def test_a_terminal_gets_a_bar_with_rate_and_the_log_still_gets_sentences():
    stream, said = Terminal(), []
    report = Reporter("demo", said.append, stream=stream, every_s=0)
    for step in (10, 20, 30):
        report({"stage": "teacher", **training(step, 30)})
    drawn = stream.getvalue()
    assert "\r" in drawn and "demo teacher" in drawn and "30/30" in drawn and "step/s" in drawn
    assert said[0] == "demo teacher: 10/30 steps (33.3%), loss 2.314, 5300 tokens/s"
    assert said[-1].startswith("demo teacher: 30/30 steps (100.0%)")


def test_without_a_log_a_terminal_gets_the_bar_only():
    stream = Terminal()
    report = Reporter("student", stream=stream, every_s=0)
    report(training(5, 10))
    report(training(10, 10))
    assert "student: 5/10 steps" not in stream.getvalue()  # no sentence lines under the bar


def test_the_dagster_logger_is_given_strings_without_braces():
    """What the assets do (`Reporter(name, context.log.info)`): every message is a str sentence."""
    context = dg.build_asset_context()
    messages = []
    real_info = context.log.info

    def info(msg, *args, **kwargs):
        messages.append(msg)
        real_info(msg, *args, **kwargs)

    context.log.info = info
    reports = [Reporter("cold_start", context.log.info, stream=io.StringIO(), every_s=0),
               Reporter("gen_ssd/demo", context.log.info, unit="problems", stream=io.StringIO(), every_s=0),
               Reporter("demo", context.log.info, stream=Terminal(), every_s=0)]
    reports[0](training(20, 40))
    reports[0](training(40, 40))
    reports[1]({"done": 16, "total": 32})
    reports[2]({"stage": "teacher", **training(1240)})
    assert len(messages) == 4
    assert all(isinstance(m, str) and "{" not in m and "}" not in m and "\r" not in m for m in messages), messages
    assert messages[3] == "demo teacher: 1240/5000 steps (24.8%), loss 2.314, 5300 tokens/s"


def test_the_assets_hand_fine_tune_a_reporter_not_a_dict_printer():
    """The Dagster side builds its progress callbacks from Reporter (no f-string of the info dict)."""
    from pathlib import Path

    import gen_ssd_dagster

    root = Path(gen_ssd_dagster.__file__).parent
    for path in [*root.glob("defs/*.py"), *root.glob("tracking/*.py"), *root.glob("*.py")]:
        text = path.read_text()
        assert "{info}" not in text, f"{path} logs a progress dict as is"
