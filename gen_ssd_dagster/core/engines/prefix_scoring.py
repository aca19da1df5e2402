"""How a student scores a candidate after its path's prefix, shared by every backend: the student's
own tokenization of each candidate (`student_pieces`), and a session over any scorer that returns
the NLLs of prefix + pieces in one call (`PrefixScorerSession`)."""

from __future__ import annotations

from gen_ssd_dagster.core.engines.interfaces import Score
from gen_ssd_dagster.core.engines.prompts import Prompter


def student_pieces(prompter: Prompter, text: str, end: bool) -> list[int]:
    """The student tokens a candidate adds: its own tokenization, + its end-of-turn token when it
    ends the solution (so the student's PPL counts knowing when to stop, as its training does)."""
    ids = prompter.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    return ids + ([prompter.end_id] if end else [])


class PrefixScorerSession:
    """A scorer session over any scorer with `pieces(text, end)` and `nlls(prefixes, pieces)`: each
    path's prefix is its prompt ids + the accepted candidates' own tokenizations (as in
    `TransformersScorer`), and all K x paths candidates go to the scorer in one call."""

    def __init__(self, scorer, ids: list[list[int]]):
        self.scorer, self.paths = scorer, ids
        self.pending: list[list[list[int]]] = []

    def score(self, candidates: list[list[str]], ends: list[list[bool]]) -> list[list[Score]]:
        s = self.scorer
        pieces = [[s.pieces(t, e) for t, e in zip(texts, text_ends)] for texts, text_ends in zip(candidates, ends)]
        flat_prefix = [self.paths[i] for i, row in enumerate(pieces) for _ in row]
        flat = [p for row in pieces for p in row]
        nlls = iter(s.nlls(flat_prefix, flat))
        self.pending = pieces
        return [[Score(float(next(nlls)), len(p)) for p in row] for row in pieces]

    def accept(self, chosen: list[int | None]) -> None:
        keep = [(i, c) for i, c in enumerate(chosen) if c is not None]
        self.paths = [self.paths[i] + self.pending[i][c] for i, c in keep]
        self.pending = []

    def add(self, questions: list[str]) -> None:
        """New paths after the live ones, prompted through the student's own format."""
        self.paths += [self.scorer.prompter.ids(q) for q in questions]
