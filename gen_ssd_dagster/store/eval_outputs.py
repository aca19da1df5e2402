"""Per-answer evaluation outputs in DuckDB, so an interrupted evaluation resumes where it stopped.

`EvalLedger` is what `core.evaluation.evaluate(..., ledger=)` reads and writes: the answers already
graded for one (model version, benchmark, grader version, evaluation settings), every sample of
each question, and one transaction per finished batch. A problem whose question or gold changed
since is redone.
"""

from __future__ import annotations

import hashlib

from ..core.types import Problem
from .db import Store, upsert_rows

COLUMNS = ["model_version", "benchmark", "grader_version", "eval_config_hash", "problem_id", "sample_index",
           "prompt_sha", "completion", "predicted", "gold", "correct", "ended", "tokens"]


def prompt_sha(problem: Problem) -> str:
    return hashlib.sha256(f"{problem.question}\x1f{problem.gold}".encode()).hexdigest()[:16]


class EvalLedger:
    def __init__(self, store: Store, model_version: str, benchmark: str, grader_version: str,
                 eval_config_hash: str):
        self.store = store
        self.key = [model_version, benchmark, grader_version, eval_config_hash]

    def done(self, problems: list[Problem]) -> dict[str, list[dict]]:
        """problem_id -> its stored answers in sample order, for the problems answered under this key as they are now."""
        rows = self.store.query(
            "SELECT problem_id, sample_index, prompt_sha, completion, predicted, gold, correct, ended, tokens"
            " FROM evaluation_outputs WHERE model_version = ? AND benchmark = ? AND grader_version = ?"
            " AND eval_config_hash = ? ORDER BY problem_id, sample_index", self.key)
        want = {p.problem_id: prompt_sha(p) for p in problems}
        out: dict[str, list[dict]] = {}
        for pid, index, sha, completion, predicted, gold, correct, ended, tokens in rows:
            if want.get(pid) == sha:
                out.setdefault(pid, []).append(
                    {"problem_id": pid, "sample_index": index, "completion": completion, "predicted": predicted,
                     "gold": gold, "correct": bool(correct), "ended": ended, "tokens": tokens})
        return out

    def record(self, problems: list[Problem], outputs: list[dict]) -> None:
        """One finished batch (every sample of each problem), in one transaction: all of it lands, or none of it."""
        sha = {p.problem_id: prompt_sha(p) for p in problems}
        rows = [(*self.key, o["problem_id"], o.get("sample_index", 0), sha[o["problem_id"]], o["completion"],
                 o["predicted"], o["gold"], bool(o["correct"]), o.get("ended"), o.get("tokens")) for o in outputs]
        with self.store.transaction() as con:
            upsert_rows(con, "evaluation_outputs", COLUMNS, rows, key=6)
