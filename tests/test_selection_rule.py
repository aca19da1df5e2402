"""The selection rule of `core/method/selection.py`, step by step, on small scripted backends.

The teacher and scorer below are test doubles of the two interfaces the loop talks to
(`backends.Teacher` / `TeacherSession`, `backends.Scorer` / `ScorerSession`): the teacher proposes
fixed chunks, the scorer returns chosen NLLs and token counts, so every perplexity is known in
advance and each test can say which candidate must win, where a path must be pruned and why. That
the real models go through the same loop is tests/test_selection.py's job.
"""

from __future__ import annotations

import math

import pytest

from gen_ssd_dagster.core.engines.interfaces import Proposal, Score
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
from gen_ssd_dagster.core.method.selection import run_gen_ssd
from gen_ssd_dagster.core.types import Problem


class ScriptedTeacher:
    """`script[question][step]` is the list of candidate chunks (text, teacher tokens, ended)
    proposed at that step of that question's path; a chunk's tokens are cut to the step's budget."""

    version = "scripted-teacher"

    def __init__(self, script: dict[str, list[list[tuple[str, int, bool]]]]):
        self.script = script
        self.sessions: list[ScriptedTeacherSession] = []

    def start(self, questions, temperature, top_p, seed):
        session = ScriptedTeacherSession(self.script, list(questions))
        self.sessions.append(session)
        return session


class ScriptedTeacherSession:
    def __init__(self, script, questions):
        self.script, self.live = script, questions  # the questions of the live paths, in order
        self.step = {q: 0 for q in questions}
        self.budgets: list[list[int]] = []  # max_tokens asked, per call
        self.accepted: list[list[int | None]] = []

    def propose(self, k, max_tokens, stop_at_newline):
        assert len(max_tokens) == len(self.live)
        self.budgets.append(list(max_tokens))
        out = []
        for q, budget in zip(self.live, max_tokens):
            chunks = self.script[q][self.step[q]][:k]
            out.append([Proposal(text, min(tokens, budget), ended) for text, tokens, ended in chunks])
        return out

    def accept(self, chosen):
        assert len(chosen) == len(self.live)
        self.accepted.append(list(chosen))
        for q in self.live:
            self.step[q] += 1
        self.live = [q for q, c in zip(self.live, chosen) if c is not None]

    def add(self, questions, seeds):
        self.live += questions
        self.step.update({q: 0 for q in questions})


class FixedScorer:
    """The student: candidate text -> (summed NLL, student tokens), as chosen by the test."""

    version = "fixed-scorer"

    def __init__(self, scores: dict[str, tuple[float, int]]):
        self.scores = scores
        self.sessions: list[FixedScorerSession] = []

    def start(self, questions):
        session = FixedScorerSession(self.scores, len(questions))
        self.sessions.append(session)
        return session


class FixedScorerSession:
    def __init__(self, scores, n_paths):
        self.scores, self.n_paths = scores, n_paths
        self.accepted: list[list[int | None]] = []

    def score(self, candidates, ends):
        assert len(candidates) == len(ends) == self.n_paths  # one row per live path
        return [[Score(*self.scores[text]) for text in row] for row in candidates]

    def accept(self, chosen):
        assert len(chosen) == self.n_paths
        self.accepted.append(list(chosen))
        self.n_paths = sum(c is not None for c in chosen)

    def add(self, questions):
        self.n_paths += len(questions)


def _problem(question: str, gold: str = "7") -> Problem:
    return Problem("demo", question, question, gold)


def _config(**kw) -> GenSSDConfig:
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=kw.pop("max_new_tokens", 64))
    return GenSSDConfig(chunk_tokens=kw.pop("chunk_tokens", 8), num_candidates=kw.pop("num_candidates", 3),
                        sampling=sampling, **kw)


def test_the_lowest_ppl_candidate_is_appended():
    teacher = ScriptedTeacher({"q": [
        [("a = 1\n", 4, False), ("b = 2\n", 4, False), ("c = 3\n", 4, False)],
        [("so 9\n", 3, False), ("#### 7", 2, True), ("#### 8", 2, True)],
    ]})
    scorer = FixedScorer({"a = 1\n": (6.0, 3), "b = 2\n": (1.5, 3), "c = 3\n": (9.0, 3),  # PPL e^2, e^0.5, e^3
                          "so 9\n": (2.0, 2), "#### 7": (0.4, 2), "#### 8": (3.0, 2)})  # e^1, e^0.2, e^1.5
    [t] = run_gen_ssd([_problem("q")], teacher, scorer, _config(suitability="none"))

    assert [s.chosen for s in t.steps] == [1, 1]
    assert t.text == "b = 2\n#### 7" and t.end_reason == "finished" and t.correct
    assert [c.ppl for c in t.steps[0].candidates] == pytest.approx([math.e ** 2, math.e ** 0.5, math.e ** 3])
    # both sides were told the same choice; a finished path is dropped from both (None) at its end
    assert teacher.sessions[0].accepted == scorer.sessions[0].accepted == [[1], [None]]
    # the path's PPL is over what was appended
    assert t.ppl == pytest.approx(math.exp((1.5 + 0.4) / 5)) and t.student_tokens == 5
    assert t.teacher_tokens == 12 + 7  # every proposed token is spent, chosen or not


def test_a_path_is_pruned_when_no_candidate_passes_max_ppl():
    teacher = ScriptedTeacher({
        "hard": [[("x\n", 4, False), ("y\n", 4, False)]],
        "easy": [[("e\n", 4, False), ("f\n", 4, False)], [("#### 7", 2, True), ("#### 9", 2, True)]],
    })
    scorer = FixedScorer({"x\n": (3.0, 1), "y\n": (2.5, 1),  # PPL 20.1 and 12.2: both above 10
                          "e\n": (2.0, 1), "f\n": (2.4, 1),  # 7.4 passes, 11.0 does not
                          "#### 7": (1.0, 1), "#### 9": (4.0, 1)})
    config = _config(suitability="absolute", max_ppl=10.0, num_candidates=2)
    hard, easy = run_gen_ssd([_problem("hard"), _problem("easy")], teacher, scorer, config)

    assert hard.end_reason == "pruned" and hard.text == "" and not hard.selected
    assert len(hard.steps) == 1 and hard.steps[0].chosen is None
    assert [c.passed for c in hard.steps[0].candidates] == [False, False]
    assert hard.teacher_tokens == 8  # its proposals were paid for
    assert easy.end_reason == "finished" and easy.text == "e\n#### 7"
    assert [c.passed for c in easy.steps[0].candidates] == [True, False]
    # the pruned path left both sessions at the first step; the second step asked for one path only
    # (which, finished, is dropped in turn)
    assert teacher.sessions[0].accepted == scorer.sessions[0].accepted == [[None, 0], [None]]
    assert teacher.sessions[0].budgets == [[8, 8], [8]]


@pytest.mark.parametrize("ratio, pruned", [(2.0, True), (5.0, False)])
def test_the_ratio_rule_compares_with_the_running_ppl_of_the_prefix(ratio, pruned):
    teacher = ScriptedTeacher({"q": [
        [("step one\n", 4, False), ("other\n", 4, False)],
        [("step two\n", 4, False), ("step 2\n", 4, False)],
        [("#### 7", 2, True), ("#### 7 ", 2, True)],
    ]})
    scorer = FixedScorer({"step one\n": (1.0, 2), "other\n": (3.0, 2),  # first chunk: PPL e^0.5 is kept
                          "step two\n": (4.0, 2), "step 2\n": (5.0, 2),  # e^2 = 7.39 and e^2.5 = 12.2
                          "#### 7": (1.0, 2), "#### 7 ": (1.2, 2)})
    # the first chunk has no prefix: only max_ppl (here far above) applies to it. Then the bar is
    # ratio x e^0.5: 2 x 1.65 = 3.3 keeps nothing out of (7.39, 12.2); 5 x 1.65 = 8.24 keeps 7.39.
    config = _config(suitability="ratio", ppl_ratio=ratio, max_ppl=1e6, num_candidates=2)
    [t] = run_gen_ssd([_problem("q")], teacher, scorer, config)

    assert t.steps[0].chosen == 0
    second = t.steps[1]
    if pruned:
        assert t.end_reason == "pruned" and second.chosen is None and len(t.steps) == 2
        assert [c.passed for c in second.candidates] == [False, False]
        assert t.text == "step one\n"
    else:
        assert second.chosen == 0 and [c.passed for c in second.candidates] == [True, False]
        assert t.end_reason == "finished" and t.text == "step one\nstep two\n#### 7"
        # the bar of the third step is the running PPL of both chunks: exp((1 + 4) / 4) x 5 = 17.5
        assert t.steps[2].candidates[0].passed


def test_the_length_cap_ends_the_path():
    chunk = [("more ", 4, False), ("less ", 4, False)]
    teacher = ScriptedTeacher({"q": [chunk] * 10})
    scorer = FixedScorer({"more ": (1.0, 1), "less ": (2.0, 1)})
    [t] = run_gen_ssd([_problem("q")], teacher, scorer,
                      _config(suitability="none", chunk_tokens=4, max_new_tokens=10, num_candidates=2))

    assert t.end_reason == "length_cap" and t.correct is None and not t.selected
    assert len(t.steps) == 3 and t.text == "more " * 3
    # each step asks for what is left of the cap, the last one only 2 tokens; 10 accepted in all
    assert teacher.sessions[0].budgets == [[4], [4], [2]]
    assert sum(s.candidates[s.chosen].teacher_tokens for s in t.steps) == 10
    assert t.teacher_tokens == 4 + 4 + 4 + 4 + 2 + 2


# Two candidates that end the solution: "#### 7" (6 characters) in 2 student tokens with NLL 2, and a
# 17-character one in 3 student tokens with NLL 4. Per token the short one is likelier
# (e^(2/2) = 2.72 < e^(4/3) = 3.79); per character the long one (e^(4/17) = 1.27 < e^(2/6) = 1.40).
SHORT, LONG = "#### 7", "so it is 7\n#### 7"


@pytest.mark.parametrize("normalisation, winner", [("token", SHORT), ("char", LONG)])
def test_token_and_character_normalisation_pick_different_candidates(normalisation, winner):
    scores = {SHORT: (2.0, 2), LONG: (4.0, 3)}
    per_token = {text: math.exp(nll / tokens) for text, (nll, tokens) in scores.items()}
    per_char = {text: math.exp(nll / len(text)) for text, (nll, _) in scores.items()}
    # the case is built so that the two normalisations disagree
    assert per_token[SHORT] < per_token[LONG] and per_char[LONG] < per_char[SHORT]

    teacher = ScriptedTeacher({"q": [[(SHORT, 3, True), (LONG, 8, True)]]})
    config = _config(suitability="none", num_candidates=2, ppl_normalisation=normalisation)
    [t] = run_gen_ssd([_problem("q")], teacher, FixedScorer(scores), config)

    want = per_token if normalisation == "token" else per_char
    assert [c.ppl for c in t.steps[0].candidates] == pytest.approx([want[SHORT], want[LONG]])
    assert t.text == winner and t.end_reason == "finished" and t.correct
    assert t.ppl == pytest.approx(want[winner])
