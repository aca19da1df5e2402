"""Where a solution ends: the GSM8K-style final-answer line `#### N`."""

from __future__ import annotations

import re

# A complete "#### N" line (newline included): the end of a solution in the project's format.
_FINAL_LINE = re.compile(r"^#### [^\n]*\S[^\n]*\n", re.MULTILINE)


def ends_with_answer(text: str) -> bool:
    """True once `text` holds a complete final-answer line."""
    return bool(_FINAL_LINE.search(text))


def cut_after_answer(text: str) -> str:
    """Drop anything written after the first complete final-answer line."""
    match = _FINAL_LINE.search(text)
    return text[: match.end()] if match else text
