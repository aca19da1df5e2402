"""The Gen-SSD loop: the teacher proposes K chunks, the student keeps the one it finds most learnable.

With `batch_size` paths in flight (a path that ends gives its slot to the next problem), each step:
1. the teacher proposes K continuations of one chunk for every live path;
2. the student scores each by its perplexity given prompt + accepted prefix (its own tokenizer);
3. the lowest-PPL candidate is appended if it passes the suitability rule; if none passes the
   path is pruned there (its teacher tokens are spent, it yields no training data);
4. a path finishes at the teacher's end of turn or the configured end marker
   (`SamplingConfig.solution_end`, `stop_strings`), or stops at the length cap (or the context).
Finished paths are graded against gold; the correct ones are the training data.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

from gen_ssd_dagster.core.engines.interfaces import Proposal, Scorer, Teacher
from gen_ssd_dagster.core.engines.seeding import problem_seed
from gen_ssd_dagster.core.method.config import GenSSDConfig, config_dict
from gen_ssd_dagster.core.method.registry import naming_problems
from gen_ssd_dagster.core.data.grading import grade
from gen_ssd_dagster.core.types import Candidate, Problem, Progress, Step, Trajectory

def normalised_ppl(nll: float, student_tokens: int, text: str, normalisation: str) -> float:
    """exp(NLL per student token), or per character (tokenizer-independent)."""
    units = student_tokens if normalisation == "token" else len(text)
    return math.exp(nll / max(1, units))


class _Path:
    """The state of one problem's trajectory while it is being built."""

    def __init__(self, problem: Problem, index: int = 0):
        self.problem, self.index = problem, index  # index: its place among the run's problems
        self.text = ""
        self.nll = 0.0
        self.student_tokens = 0
        self.teacher_tokens = 0  # every token the teacher generated for this path
        self.accepted_teacher_tokens = 0
        self.steps: list[Step] = []
        self.end_reason: str | None = None

    def running_ppl(self, normalisation: str) -> float | None:
        if not self.text and not self.student_tokens:
            return None
        return normalised_ppl(self.nll, self.student_tokens, self.text, normalisation)


def _passes(ppl: float, path: _Path, config: GenSSDConfig, ends: bool) -> bool:
    if config.suitability == "none" or (ends and not config.prune_final_chunk):
        return True
    running = path.running_ppl(config.ppl_normalisation)
    if config.suitability == "absolute" or running is None:
        return ppl <= config.max_ppl
    return ppl <= config.ppl_ratio * running


def run_gen_ssd(
    problems: list[Problem],
    teacher: Teacher,
    scorer: Scorer,
    config: GenSSDConfig,
    batch_size: int = 16,
    progress: Progress | None = None,
    lockstep: bool = False,
) -> list[Trajectory]:
    """One selected trajectory per problem, in the order of `problems` (`iter_gen_ssd` runs them)."""
    out: dict[int, Trajectory] = {}
    for index, trajectory in iter_gen_ssd(problems, teacher, scorer, config, batch_size, lockstep):
        out[index] = trajectory
        if progress:
            progress({"done": len(out), "total": len(problems), "method": config.method})
    return [out[i] for i in range(len(problems))]


def iter_gen_ssd(problems: list[Problem], teacher: Teacher, scorer: Scorer, config: GenSSDConfig,
                 slots: int = 16, lockstep: bool = False) -> Iterator[tuple[int, Trajectory]]:
    """(index in `problems`, trajectory) of each path as it ends, with `slots` paths in flight.

    When a path ends (pruned, finished, capped) the next problem takes its slot before the next
    step, so the engines stay full until the queue runs dry, whatever the spread of path lengths.
    Each path draws from its problem's own seed (`seeding.problem_seed`), so its trajectory does not
    depend on which paths ran beside it, nor on when it joined. `lockstep` starts new paths only once
    every path of the group has ended (batches that last as long as their longest path; kept to
    measure against, benchmarks/kept_trajectory_cost.py)."""
    config.validate()
    if slots < 1:
        raise ValueError(f"slots (batch_size) must be >= 1, got {slots}")
    s = config.sampling
    queue = deque(enumerate(problems))
    live: list[_Path] = []
    teach = student = None
    while live or queue:
        free = slots - len(live) if (not lockstep or not live) else 0
        joining = [_Path(p, i) for i, p in (queue.popleft() for _ in range(min(free, len(queue))))]
        if joining:
            questions = [path.problem.question for path in joining]  # each model prompts them its own way
            seeds = [problem_seed(s.seed, path.problem.problem_id) for path in joining]
            with naming_problems([path.problem for path in joining]):  # e.g. a prompt past the context
                if live:
                    teach.add(questions, seeds)
                    student.add(questions)
                else:
                    teach, student = teacher.start(questions, s.temperature, s.top_p, seeds), scorer.start(questions)
            live += joining
        _step(live, teach, student, config)
        for path in live:
            if path.end_reason is not None:
                yield path.index, _to_trajectory(path, config)
        live = [path for path in live if path.end_reason is None]


def _step(live: list[_Path], teach, student, config: GenSSDConfig) -> None:
    """One chunk for every live path: propose K, score, keep the best or prune; ended paths leave
    both sessions."""
    s = config.sampling
    budgets = [min(config.chunk_tokens, s.max_new_tokens - p.accepted_teacher_tokens) for p in live]
    proposals = teach.propose(config.num_candidates, budgets, config.snap_to_line)
    # A candidate that ends the solution is scored with the student's EOS: stopping is learnt too.
    ends = [[c.ended or s.end_rule.ends(path.text + c.text) for c in props] for path, props in zip(live, proposals)]
    scores = student.score([[c.text for c in props] for props in proposals], ends)
    chosen = [_choose(*args, config) for args in zip(live, proposals, scores, ends)]
    # One call drops pruned and ended paths from both caches and keeps the winners' rows.
    keep = [c if path.end_reason is None else None for path, c in zip(live, chosen)]
    teach.accept(keep)
    student.accept(keep)


def _choose(path: _Path, proposals: list[Proposal], scores, ends: list[bool], config: GenSSDConfig) -> int | None:
    """Record the step, append the winner (or prune), and set `end_reason` when the path ends."""
    candidates = []
    for prop, score, end in zip(proposals, scores, ends):
        ppl = normalised_ppl(score.nll, score.tokens, prop.text, config.ppl_normalisation)
        candidates.append(
            Candidate(
                text=prop.text,
                teacher_tokens=prop.tokens,
                student_tokens=score.tokens,
                nll=score.nll,
                ppl=ppl,
                passed=_passes(ppl, path, config, end),
                ends_solution=end,
            )
        )
    path.teacher_tokens += sum(p.tokens for p in proposals)
    # The lowest-PPL candidate that passes (the rule is a ceiling on PPL, so this is the lowest-PPL
    # candidate, except where prune_final_chunk=False lets a solution's last chunk pass regardless).
    passing = [i for i, c in enumerate(candidates) if c.passed]
    best = min(passing or range(len(candidates)), key=lambda i: candidates[i].ppl)
    if not candidates[best].passed:
        path.steps.append(Step(candidates, None))
        path.end_reason = "pruned"
        return None
    win = candidates[best]
    path.steps.append(Step(candidates, best))
    path.text += win.text
    path.nll += win.nll
    path.student_tokens += win.student_tokens
    path.accepted_teacher_tokens += win.teacher_tokens
    if win.ends_solution:
        path.end_reason = "finished"
    elif path.accepted_teacher_tokens >= config.sampling.max_new_tokens or proposals[best].context_full:
        path.end_reason = "length_cap"
    return best


def _to_trajectory(path: _Path, config: GenSSDConfig) -> Trajectory:
    p = path.problem
    text = config.sampling.end_rule.cut(path.text)  # a stop string may sit inside the last chunk
    predicted, correct = (None, None)
    if path.end_reason == "finished":
        predicted, correct = grade(text, p.gold)
    trajectory = Trajectory(
        dataset=p.dataset,
        problem_id=p.problem_id,
        method=config.method,
        sample_index=0,
        question=p.question,
        gold=p.gold,
        text=text,
        end_reason=path.end_reason or "length_cap",
        teacher_tokens=path.teacher_tokens,
        student_tokens=path.student_tokens,
        ppl=path.running_ppl(config.ppl_normalisation),
        predicted=predicted,
        correct=correct,
        selected=False,
        steps=path.steps,
        config=config_dict(config),
    )
    trajectory.selected = config.sampling.keeps(trajectory)
    return trajectory
