"""The baselines, shaped like Gen-SSD: problems in, trajectories out.

All draw K complete teacher solutions per problem and have the student score each whole
solution (so every method reports the PPL of what it trains on). They differ in what they keep:
Standard KD keeps every correct sample; post-hoc filtering keeps the correct sample of lowest
student PPL; the answer-likelihood selection (in the spirit of MoRSD, arXiv 2509.23574, whose
code is not public) keeps the correct sample under which the student finds the answer likeliest.
"""

from __future__ import annotations

from typing import Callable

from gen_ssd_dagster.core.engines.interfaces import Scorer, Teacher
from gen_ssd_dagster.core.engines.seeding import problem_seed
from gen_ssd_dagster.core.method.config import PostHocConfig, SamplingConfig, StandardKDConfig, config_dict
from gen_ssd_dagster.core.data.grading import grade
from gen_ssd_dagster.core.method.selection import normalised_ppl
from gen_ssd_dagster.core.types import Problem, Progress, Trajectory


def sample_full(
    problems: list[Problem],
    teacher: Teacher,
    scorer: Scorer,
    config: StandardKDConfig | PostHocConfig,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[list[Trajectory]]:
    """K complete, graded, student-scored teacher solutions per problem (none selected yet)."""
    s = config.sampling
    normalisation = getattr(config, "ppl_normalisation", "token")
    out: list[list[Trajectory]] = []
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        questions = [p.question for p in batch]  # each model prompts them through its own format
        # Seeded by the problem: its K samples do not depend on the batch it lands in.
        session = teacher.start(questions, s.temperature, s.top_p, [problem_seed(s.seed, p.problem_id) for p in batch])
        proposals = session.propose(config.num_candidates, [s.max_new_tokens] * len(batch), stop_at_newline=False)
        end_rule = s.end_rule
        texts = [[end_rule.cut(c.text) for c in props] for props in proposals]
        finished = [[c.ended or end_rule.ends(t) for c, t in zip(props, ts)] for props, ts in zip(proposals, texts)]
        flat_questions = [q for q, ts in zip(questions, texts) for _ in ts]
        flat_scores = scorer.score_texts(flat_questions, [t for ts in texts for t in ts], [f for fs in finished for f in fs])
        for i, problem in enumerate(batch):
            samples = []
            for k, (prop, text, done) in enumerate(zip(proposals[i], texts[i], finished[i])):
                score = flat_scores[i * config.num_candidates + k]
                predicted, correct = grade(text, problem.gold) if done else (None, None)
                samples.append(
                    Trajectory(
                        dataset=problem.dataset,
                        problem_id=problem.problem_id,
                        method=config.method,
                        sample_index=k,
                        question=problem.question,
                        gold=problem.gold,
                        text=text,
                        end_reason="finished" if done else "length_cap",
                        teacher_tokens=prop.tokens,
                        student_tokens=score.tokens,
                        ppl=normalised_ppl(score.nll, score.tokens, text, normalisation),
                        predicted=predicted,
                        correct=correct,
                        config=config_dict(config),
                    )
                )
            out.append(samples)
        if progress:
            progress({"done": len(out), "total": len(problems), "method": config.method})
    return out


def run_standard_kd(problems, teacher, scorer, config: StandardKDConfig, batch_size=16, progress=None) -> list[Trajectory]:
    config.validate()
    groups = sample_full(problems, teacher, scorer, config, batch_size, progress)
    for samples in groups:
        for t in samples:
            t.selected = config.sampling.keeps(t)
    return [t for samples in groups for t in samples]


def run_posthoc(problems, teacher, scorer, config: PostHocConfig, batch_size=16, progress=None) -> list[Trajectory]:
    config.validate()
    groups = sample_full(problems, teacher, scorer, config, batch_size, progress)
    for samples in groups:
        select_lowest_ppl_correct(samples, config.sampling.keeps)
    return [t for samples in groups for t in samples]


def select_lowest(samples: list[Trajectory], scores: list[float],
                  keeps: Callable[[Trajectory], bool] = SamplingConfig().keeps) -> None:
    """Mark, among one problem's samples that `keeps` allows (`SamplingConfig.keeps`: the correct
    ones by default), the one of lowest score."""
    allowed = [i for i, t in enumerate(samples) if keeps(t)]
    if allowed:
        samples[min(allowed, key=lambda i: scores[i])].selected = True


def select_lowest_ppl_correct(samples: list[Trajectory],
                              keeps: Callable[[Trajectory], bool] = SamplingConfig().keeps) -> None:
    """Post-hoc filtering: the allowed sample the student finds most predictable."""
    select_lowest(samples, [t.ppl for t in samples], keeps)


def split_answer(text: str) -> tuple[str, str]:
    """(rationale, answer): the answer is the last line, with the newline before it."""
    cut = text.rstrip().rfind("\n")
    return (text[:cut], text[cut:]) if cut >= 0 else ("", text)


def answer_nlls(samples: list[Trajectory], scorer: Scorer, batch_size: int = 64) -> list[float]:
    """-log P(answer line | question, rationale) under the student, per sample (`split_answer`).
    For a correct sample the answer line states the gold answer."""
    out: list[float] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        rationales, answers = zip(*(split_answer(t.text) for t in batch))
        session = scorer.start([t.question for t in batch])
        session.score([[r] for r in rationales], [[False]] * len(batch))
        session.accept([0] * len(batch))
        scores = session.score([[a] for a in answers], [[True]] * len(batch))
        out.extend(s[0].nll for s in scores)
    return out

