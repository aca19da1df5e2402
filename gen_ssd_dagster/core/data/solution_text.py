"""Where a solution ends, by configuration.

A solution always ends at the model's end of turn (EOS, `<|im_end|>`, …: see `prompts.Prompter`).
`solution_end` adds one marker that ends it earlier, for models that keep writing after their
answer (base models, the embedded demo):
    "eos"          nothing more: instruct models close their turn themselves;
    "answer_line"  a complete `#### N` line (the demo world's and GSM8K's format);
    "boxed"        the end of the line that closes a `\\boxed{…}`.
`stop_strings` end it too, the stop string included (as vLLM's `include_stop_str_in_output`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from gen_ssd_dagster.core.data.grading import boxes

SolutionEndName = Literal["eos", "answer_line", "boxed"]
SOLUTION_ENDS = get_args(SolutionEndName)
_BOXED_ONLY = re.compile(r"\\boxed\s*\{")

# A complete "#### N" line (newline included).
_FINAL_LINE = re.compile(r"^#### [^\n]*\S[^\n]*\n", re.MULTILINE)


def _boxed_line_end(text: str) -> int | None:
    """Index just past the newline of the first line on which a `\\boxed{…}` closes."""
    for _, end in boxes(text, _BOXED_ONLY):
        newline = text.find("\n", end)
        return None if newline < 0 else newline + 1
    return None


@dataclass(frozen=True)
class SolutionEnd:
    """The rule that says a solution is complete, and cuts what a model wrote past it."""

    solution_end: str = "eos"
    stop_strings: tuple[str, ...] = ()

    def _cut_at(self, text: str) -> int | None:
        ends = []
        if self.solution_end == "answer_line":
            m = _FINAL_LINE.search(text)
            ends.append(m.end() if m else None)
        elif self.solution_end == "boxed":
            ends.append(_boxed_line_end(text))
        for stop in self.stop_strings:
            i = text.find(stop)
            ends.append(i + len(stop) if i >= 0 else None)
        found = [e for e in ends if e is not None]
        return min(found) if found else None

    def ends(self, text: str) -> bool:
        """True once `text` holds a complete end marker."""
        return self._cut_at(text) is not None

    def cut(self, text: str) -> str:
        """Drop anything written after the first end marker."""
        at = self._cut_at(text)
        return text if at is None else text[:at]


ANSWER_LINE = SolutionEnd("answer_line")
