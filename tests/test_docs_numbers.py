"""Counts the docs state, checked against the code: a stale number must carry the date it held on."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATED = re.compile(r"\d{4}-\d{2}-\d{2}|used to")
TEST_SET = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+) (?:demo )?test (?:problems|questions)\b")


def paragraphs_with_heading(text: str):
    """(the heading above, the paragraph) for each blank-line separated block of a markdown file."""
    heading = ""
    for block in re.split(r"\n\s*\n", text):
        headings = [line for line in block.splitlines() if line.startswith("#")]
        heading = headings[-1] if headings else heading
        yield heading, block


def test_test_set_sizes_are_the_demo_default_or_dated():
    from gen_ssd_dagster.core.demo.run import DemoConfig

    n_test = DemoConfig().n_test
    stale = [f"{doc}: {block.strip()[:160]!r}"
             for doc in ("README.md", "docs/comparison.md", "docs/evaluation.md")
             for heading, block in paragraphs_with_heading((REPO / doc).read_text())
             for n in TEST_SET.findall(block)
             if int(n.replace(",", "")) != n_test and not DATED.search(heading + block)]
    assert not stale, f"test-set sizes other than today's {n_test}, without the date they held on:\n" + "\n".join(stale)


def test_easy_teacher_config_is_the_default_world():
    """configs/easy_teacher.yaml says its world is the default one."""
    from gen_ssd_dagster.core.demo.models import DemoModelsConfig

    config = yaml.safe_load((REPO / "configs" / "easy_teacher.yaml").read_text())
    assert tuple(config["resources"]["models"]["demo"]["style_weights"]) == DemoModelsConfig().style_weights
