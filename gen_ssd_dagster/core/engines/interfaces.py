"""The interfaces the method talks to, and the values that cross them: no backend, no torch.

* a teacher `start(prompts)`s a session; each step it `propose`s K continuations per live path and
  is told which one was `accept`ed (or that the path was dropped); new paths can join a session at
  any step (`add`), so a path that ends gives its place to the next problem at once;
* a student scorer does the same with `score`, returning the summed NLL and token count of each
  candidate under the student's OWN tokenizer, and scores whole texts with `score_texts`. Only
  text crosses between them, so teacher and student need not share a vocabulary.

Each backend (transformers_backend.py, vllm_backend.py, openai_backend.py) implements them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gen_ssd_dagster.core.errors import ConfigError


def check_sampling(temperature: float, top_p: float, max_new_tokens: int, draws: int, draws_name: str,
                   scope: str = "") -> None:
    """The one check of how a backend samples, for the teacher (`method.config.SamplingConfig`:
    `draws` = K candidates) and for the scored students (`evaluation.evaluate.EvalSettings`: `draws`
    = answers per question). `scope` starts each message ("evaluation ")."""
    if draws < 1:
        raise ConfigError(f"{scope}{draws_name} must be >= 1, got {draws}")
    if temperature < 0:
        raise ConfigError(f"{scope}temperature must be >= 0 (0 = greedy), got {temperature}")
    if not temperature > 0 and draws > 1:
        raise ConfigError(f"{scope}{draws_name}={draws} with temperature {temperature}: greedy draws are all the "
                          f"same; set temperature > 0 (e.g. 0.6) or {draws_name}: 1")
    if not 0 < top_p <= 1:
        raise ConfigError(f"{scope}top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ConfigError(f"{scope}max_new_tokens must be >= 1, got {max_new_tokens}")


@dataclass
class Proposal:
    text: str
    tokens: int  # teacher tokens generated (EOS included)
    ended: bool  # the teacher closed its turn (EOS or end-of-turn token)
    context_full: bool = False  # stopped because prompt + text filled the teacher's context


@dataclass
class Score:
    nll: float  # summed over the student tokens of the text (+ the student's end token if it ends there)
    tokens: int


class TeacherSession(Protocol):
    def propose(self, k: int, max_tokens: list[int], stop_at_newline: bool) -> list[list[Proposal]]: ...
    def accept(self, chosen: list[int | None]) -> None: ...
    # New paths after the live ones, each with its own seed (`seeding.problem_seed`).
    def add(self, questions: list[str], seeds: list[int]) -> None: ...


class ScorerSession(Protocol):
    def score(self, candidates: list[list[str]], ends: list[list[bool]]) -> list[list[Score]]: ...
    def accept(self, chosen: list[int | None]) -> None: ...
    def add(self, questions: list[str]) -> None: ...


class Teacher(Protocol):
    version: str

    # `seed`: one seed for the session (path i draws from the stream (seed, i)), or one per question
    # (`seeding.path_streams`).
    def start(self, questions: list[str], temperature: float, top_p: float,
              seed: int | list[int]) -> TeacherSession: ...


class Scorer(Protocol):
    version: str

    def start(self, questions: list[str]) -> ScorerSession: ...
    def score_texts(self, questions: list[str], texts: list[str], ends: list[bool] | None = None) -> list[Score]: ...


class ScoresWholeTexts:
    """`score_texts` for any scorer with `start`: whole completions are one-chunk paths."""

    def score_texts(self, questions: list[str], texts: list[str], ends: list[bool] | None = None) -> list[Score]:
        """Score whole completions (post-hoc filtering, trajectory PPL): one text per question."""
        session = self.start(questions)
        scores = session.score([[t] for t in texts], [[e] for e in (ends or [True] * len(texts))])
        return [s[0] for s in scores]
