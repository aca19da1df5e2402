"""The Gen-SSD loop: the teacher proposes K chunks, the student keeps the one it finds most learnable.

For a batch of problems, each step:
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

from gen_ssd_dagster.core.batching import batches
from gen_ssd_dagster.core.engines.interfaces import Proposal, Scorer, Teacher
from gen_ssd_dagster.core.method.config import GenSSDConfig, config_dict
from gen_ssd_dagster.core.data.grading import grade
from gen_ssd_dagster.core.types import Candidate, Problem, Progress, Step, Trajectory

def normalised_ppl(nll: float, student_tokens: int, text: str, normalisation: str) -> float:
    """exp(NLL per student token), or per character (tokenizer-independent)."""
    units = student_tokens if normalisation == "token" else len(text)
    return math.exp(nll / max(1, units))


class _Path:
    """The state of one problem's trajectory while it is being built."""

    def __init__(self, problem: Problem):
        self.problem = problem
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
) -> list[Trajectory]:
    """One selected trajectory per problem, in the order of `problems`."""
    config.validate()
    out: list[Trajectory] = []
    for _, batch, seed in batches(problems, batch_size, config.sampling.seed):
        out.extend(_run_batch(batch, teacher, scorer, config, seed=seed))
        if progress:
            progress({"done": len(out), "total": len(problems), "method": config.method})
    return out


def _run_batch(problems: list[Problem], teacher: Teacher, scorer: Scorer, config: GenSSDConfig, seed: int) -> list[Trajectory]:
    s = config.sampling
    end_rule = s.end_rule
    questions = [p.question for p in problems]  # each model prompts them through its own format
    teach = teacher.start(questions, s.temperature, s.top_p, seed)
    student = scorer.start(questions)
    paths = [_Path(p) for p in problems]
    live = list(paths)
    while live:
        budgets = [min(config.chunk_tokens, s.max_new_tokens - p.accepted_teacher_tokens) for p in live]
        proposals = teach.propose(config.num_candidates, budgets, config.snap_to_line)
        # A candidate that ends the solution is scored with the student's EOS: stopping is learnt too.
        ends = [[c.ended or end_rule.ends(path.text + c.text) for c in props] for path, props in zip(live, proposals)]
        scores = student.score([[c.text for c in props] for props in proposals], ends)
        chosen = [_choose(*args, config) for args in zip(live, proposals, scores, ends)]
        # One call drops pruned and ended paths from both caches and keeps the winners' rows.
        keep = [c if path.end_reason is None else None for path, c in zip(live, chosen)]
        teach.accept(keep)
        student.accept(keep)
        live = [path for path in live if path.end_reason is None]
    return [_to_trajectory(p, config) for p in paths]


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
