"""`on_bad_row: skip` for the trajectory assets: questions whose prompt does not fit the teacher's or
the student's context are left out before generation (instead of failing their batch), logged and
named in the materialization's metadata."""

import dagster as dg

from ..core.engines.prompt_fit import too_long_problems
from .data import NAMED_SKIPS


def without_too_long(context, problems, teacher, scorer, on_bad_row: str) -> tuple[list, dict]:
    """(the problems that fit, metadata naming those left out); all of them under "error"."""
    if on_bad_row != "skip":
        return problems, {}
    too_long = too_long_problems(problems, teacher, scorer)
    if not too_long:
        return problems, {"n_skipped_too_long": 0}
    named = list(too_long.items())[:NAMED_SKIPS]
    more = f"\n\n... and {len(too_long) - len(named)} more" if len(too_long) > len(named) else ""
    context.log.warning(f"on_bad_row=skip: {len(too_long)} problem(s) too long for the context left out:\n"
                        + "\n".join(f"{pid}: {why}" for pid, why in named) + more)
    table = "| problem | why |\n|---|---|\n" + "\n".join(f"| {pid} | {why} |" for pid, why in named)
    return ([p for p in problems if p.problem_id not in too_long],
            {"n_skipped_too_long": len(too_long), "skipped_too_long": dg.MetadataValue.md(table + more)})
