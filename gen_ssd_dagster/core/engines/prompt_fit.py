"""Prompts that do not fit a model's context, found before any generation.

A backend that knows its tokenizer and context has `too_long(questions) -> {index: why}` (the
transformers teacher and scorer, the vLLM teacher); a served model tokenizes on its server, so there
the server's own refusal is the check.
"""

from __future__ import annotations

from typing import Sequence

from gen_ssd_dagster.core.types import Problem


def prompt_overflows(ids: list[list[int]], limit: int | None, who: str) -> dict[int, str]:
    """Index -> why, for each prompt that leaves no room in a context of `limit` tokens."""
    return {i: f"{len(row)} {who} tokens, more than the {who}'s context of {limit}"
            for i, row in enumerate(ids) if limit and len(row) >= limit}


def too_long_problems(problems: Sequence[Problem], *backends) -> dict[str, str]:
    """problem_id -> why, for each problem whose prompt overflows any of `backends` that can tell."""
    out: dict[str, str] = {}
    questions = [p.question for p in problems]
    for backend in backends:
        check = getattr(backend, "too_long", None)
        for i, why in (check(questions) if check else {}).items():
            out.setdefault(problems[i].problem_id, why)
    return out
