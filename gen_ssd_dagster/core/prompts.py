"""The text format every part shares: how a question becomes a prompt, how a solution ends.

Teacher sampling, student scoring, training and evaluation must all see the same prompt, or the
student's perplexities and the trained model would be measured on a different text than it learns.
The trainer appends the tokenizer's EOS token after the completion (the solution).
"""

from __future__ import annotations

FINAL_ANSWER_PREFIX = "#### "  # GSM8K's marker: a solution's last line is "#### N"


def format_prompt(question: str) -> str:
    """The prompt for one question; the completion (a worked solution) follows it directly."""
    return f"Question: {question}\nAnswer:\n"


def final_answer_line(answer: str) -> str:
    """The last line of a solution: ``#### 18``."""
    return f"{FINAL_ANSWER_PREFIX}{answer}"
