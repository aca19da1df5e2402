"""The Gen-SSD loop and the baselines on real (tiny, random) transformer models."""

import dataclasses

import pytest

from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.method.baselines import run_posthoc, run_standard_kd
from gen_ssd_dagster.core.method.config import GenSSDConfig, PostHocConfig, SamplingConfig, StandardKDConfig
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.method.registry import run_method
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.method.selection import normalised_ppl, run_gen_ssd
from gen_ssd_dagster.core.types import Problem

PROBLEMS = [
    Problem("demo", f"demo-{i}", q, g)
    for i, (q, g) in enumerate(
        [("Mia has 7 apples. She buys 5 more.", "12"), ("Tom has 12 pears.", "12"), ("What is 8 * 2?", "16")]
    )
]


def _config(**kw) -> GenSSDConfig:
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=3)
    return GenSSDConfig(chunk_tokens=6, num_candidates=3, sampling=sampling, **kw)


def test_gen_ssd_keeps_lowest_ppl_candidate_and_accounts_for_every_token(backends):
    teacher, scorer = backends
    config = _config(suitability="none")
    trajectories = run_method(config, PROBLEMS, teacher, scorer, batch_size=2)
    assert [t.problem_id for t in trajectories] == [p.problem_id for p in PROBLEMS]
    for t in trajectories:
        assert t.end_reason in ("finished", "length_cap")  # "none" never prunes
        assert t.config["num_candidates"] == 3 and t.config["chunk_tokens"] == 6
        assert t.text == "".join(s.candidates[s.chosen].text for s in t.steps)
        assert t.teacher_tokens == sum(c.teacher_tokens for s in t.steps for c in s.candidates)
        for step in t.steps:
            assert len(step.candidates) == 3
            assert step.candidates[step.chosen].ppl == min(c.ppl for c in step.candidates)
            for c in step.candidates:
                assert 1 <= c.teacher_tokens <= 6
                # Scored under the STUDENT's tokenizer, not the teacher's (+1 for the student's EOS).
                n = len(scorer.tokenizer(c.text, add_special_tokens=False)["input_ids"]) if c.text else 0
                assert c.student_tokens == n + int(c.ends_solution)
                assert c.ppl == pytest.approx(normalised_ppl(c.nll, c.student_tokens, c.text, "token"))


def test_candidate_nll_equals_student_scoring_the_text_directly(backends):
    teacher, scorer = backends
    trajectory = run_method(_config(suitability="none"), PROBLEMS[:1], teacher, scorer)[0]

    first = trajectory.steps[0]
    direct = scorer.score_texts([PROBLEMS[0].question] * 3, [c.text for c in first.candidates],
                                [c.ends_solution for c in first.candidates])
    for c, d in zip(first.candidates, direct):
        assert c.nll == pytest.approx(d.nll, rel=1e-4, abs=1e-4)


def test_same_seed_same_trajectories(backends):
    teacher, scorer = backends
    a = run_method(_config(suitability="none"), PROBLEMS, teacher, scorer)
    b = run_method(_config(suitability="none"), PROBLEMS, teacher, scorer)
    assert [t.text for t in a] == [t.text for t in b]


def test_absolute_ceiling_prunes_when_no_candidate_is_learnable(backends):
    teacher, scorer = backends
    # A random student's perplexity is near its vocabulary size: nothing passes a ceiling of 2.
    # (a random teacher may end its solution in the first chunk: held to the rule too)
    trajectories = run_method(_config(suitability="absolute", max_ppl=2.0, prune_final_chunk=True), PROBLEMS,
                              teacher, scorer)
    for t in trajectories:
        assert t.end_reason == "pruned" and t.text == "" and not t.selected
        assert len(t.steps) == 1 and t.steps[0].chosen is None
        assert t.teacher_tokens == sum(c.teacher_tokens for c in t.steps[0].candidates) > 0


def test_a_final_chunk_passes_when_prune_final_chunk_is_off(tiny_models, memorizing_teacher):
    """With prune_final_chunk=True a chunk that ends the solution is held to the rule; with False (the
    default) it passes (its teacher tokens are spent either way) and grading judges the finished path."""
    from gen_ssd_dagster.core.method.config import config_dict
    from gen_ssd_dagster.core.demo.world import generate_problems

    teacher = TransformersTeacher(ModelSpec(str(memorizing_teacher)))
    scorer = TransformersScorer(ModelSpec(str(tiny_models[1])))
    problems = generate_problems(4, 0, "train")  # the ones the teacher memorised: whole solutions
    sampling = SamplingConfig(temperature=0.3, max_new_tokens=96, solution_end="answer_line")
    strict = GenSSDConfig(chunk_tokens=96, snap_to_line=False, suitability="absolute", max_ppl=1.0001,
                          sampling=sampling, prune_final_chunk=True)
    assert not GenSSDConfig().prune_final_chunk
    pruned = run_gen_ssd(problems, teacher, scorer, strict)
    assert {t.end_reason for t in pruned} == {"pruned"}
    assert all(c.ends_solution for t in pruned for c in t.steps[0].candidates)  # the only chunk ends it
    lenient = run_gen_ssd(problems, teacher, scorer, dataclasses.replace(strict, prune_final_chunk=False))
    assert {t.end_reason for t in lenient} == {"finished"} and sum(bool(t.correct) for t in lenient) >= 3
    assert [t.teacher_tokens for t in lenient] == [t.teacher_tokens for t in pruned]
    # the old behaviour leaves no trace in the stored config: work stored before the knob keeps its key
    assert "prune_final_chunk" not in config_dict(strict)
    assert config_dict(dataclasses.replace(strict, prune_final_chunk=False))["prune_final_chunk"] is False


def test_ratio_rule_compares_with_running_ppl_of_accepted_prefix(backends):
    teacher, scorer = backends
    loose = run_method(_config(suitability="ratio", ppl_ratio=100.0, max_ppl=1e6), PROBLEMS, teacher, scorer)
    assert all(t.end_reason != "pruned" for t in loose)
    # A PPL is >= 1 and a random student's running PPL is far below 10,000, so after the first chunk
    # (held to max_ppl only) no candidate can be below 0.0001 x the prefix's: every path that does not
    # finish in its first chunk must be pruned at its second.
    ratio = 1e-4
    tight = run_method(_config(suitability="ratio", ppl_ratio=ratio, max_ppl=1e6), PROBLEMS, teacher, scorer)
    assert any(t.end_reason == "pruned" for t in tight)
    for t in tight:
        assert t.steps[0].chosen is not None
        if t.end_reason != "finished" or len(t.steps) > 1:
            assert t.end_reason == "pruned" and len(t.steps) == 2 and t.steps[1].chosen is None
            first = t.steps[0].candidates[t.steps[0].chosen]
            running = normalised_ppl(first.nll, first.student_tokens, first.text, "token")
            assert all(not c.passed and c.ppl > ratio * running for c in t.steps[1].candidates)


class _NeverEnds:
    """The teacher, except that no candidate reports the end of its turn: every path runs to the cap."""

    def __init__(self, teacher):
        self.teacher = teacher

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def start(self, *args):
        session = self.teacher.start(*args)
        propose = session.propose
        session.propose = lambda *a: [[dataclasses.replace(c, ended=False) for c in props] for props in propose(*a)]
        return session


def test_length_cap_ends_paths(backends):
    teacher, scorer = backends
    # A cap that is not a multiple of the chunk: the last chunk may only take what is left (6, 6, 4).
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=3, solution_end="eos")
    config = GenSSDConfig(chunk_tokens=6, num_candidates=3, sampling=sampling, suitability="none", snap_to_line=False)
    trajectories = run_method(config, PROBLEMS, _NeverEnds(teacher), scorer)
    assert [t.end_reason for t in trajectories] == ["length_cap"] * len(PROBLEMS)
    for t in trajectories:
        assert sum(s.candidates[s.chosen].teacher_tokens for s in t.steps) == 16
        left = 16
        for step in t.steps:
            assert all(c.teacher_tokens <= min(6, left) for c in step.candidates)
            left -= step.candidates[step.chosen].teacher_tokens
        assert left == 0
        assert t.predicted is None and t.correct is None  # an unfinished solution is not graded


def test_baselines_sample_k_full_solutions(backends):
    teacher, scorer = backends
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=16, seed=1)
    kd = run_standard_kd(PROBLEMS, teacher, scorer, StandardKDConfig(num_candidates=2, sampling=sampling))
    post = run_posthoc(PROBLEMS, teacher, scorer, PostHocConfig(num_candidates=2, sampling=sampling))
    for trajectories, method in ((kd, "standard_kd"), (post, "posthoc")):
        assert len(trajectories) == 2 * len(PROBLEMS)
        assert {t.method for t in trajectories} == {method}
        assert all(0 < t.teacher_tokens <= 16 and t.ppl > 1 for t in trajectories)
    assert all(t.selected == bool(t.correct) for t in kd)  # Standard KD keeps every correct sample
    # Post-hoc keeps, per problem, exactly one sample when any is correct: the correct one of lowest PPL.
    for problem in PROBLEMS:
        samples = [t for t in post if t.problem_id == problem.problem_id]
        correct = [t for t in samples if t.correct]
        kept = [t for t in samples if t.selected]
        if correct:
            assert len(kept) == 1 and kept[0].correct and kept[0].ppl == min(t.ppl for t in correct)
        else:
            assert kept == []
    # Same seed, same teacher: both baselines see the very same samples.
    assert [t.text for t in kd] == [t.text for t in post]


@pytest.mark.parametrize(
    "config, setting",
    [
        (GenSSDConfig(num_candidates=0), "num_candidates"),
        (GenSSDConfig(chunk_tokens=0), "chunk_tokens"),
        (GenSSDConfig(sampling=SamplingConfig(temperature=0.0)), "temperature"),
        (GenSSDConfig(sampling=SamplingConfig(top_p=1.5)), "top_p"),
        (GenSSDConfig(suitability="sometimes"), "suitability"),
        (StandardKDConfig(num_candidates=-1), "num_candidates"),
    ],
)
def test_bad_settings_are_named(config, setting):
    with pytest.raises(ConfigError, match=setting):
        config.validate()


def test_greedy_single_candidate_is_allowed():
    GenSSDConfig(num_candidates=1, sampling=SamplingConfig(temperature=0.0)).validate()


def test_config_hash_changes_with_any_knob():
    from gen_ssd_dagster.core.method.config import config_hash

    base = GenSSDConfig()
    assert config_hash(base) == config_hash(GenSSDConfig())
    assert config_hash(base) != config_hash(dataclasses.replace(base, chunk_tokens=17))
    assert config_hash(base) != config_hash(dataclasses.replace(base, sampling=SamplingConfig(seed=1)))


def test_posthoc_keeps_only_the_lowest_ppl_correct_sample():
    from gen_ssd_dagster.core.method.baselines import select_lowest_ppl_correct
    from gen_ssd_dagster.core.types import Trajectory

    def sample(i, ppl, correct):
        return Trajectory("demo", "p", "posthoc", i, "q", "1", "t", "finished", 5, 5, ppl, "1", correct)

    samples = [sample(0, 1.5, False), sample(1, 3.0, True), sample(2, 2.0, True), sample(3, 9.0, None)]
    select_lowest_ppl_correct(samples)
    assert [t.selected for t in samples] == [False, False, True, False]
    wrong = [sample(0, 1.1, False)]
    select_lowest_ppl_correct(wrong)
    assert not wrong[0].selected


def test_missing_or_broken_checkpoint_is_named(tmp_path):
    from gen_ssd_dagster.core.errors import ModelLoadError

    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no_such_model.*does not exist"):
        TransformersTeacher(ModelSpec(str(missing)))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        TransformersScorer(ModelSpec(str(empty)))


@pytest.mark.parametrize("method", ["gen_ssd", "standard_kd", "posthoc"])
def test_keep_finished_trains_on_solutions_that_end_right_or_wrong(backends, method):
    """keep="finished" (a teacher too weak to be right) selects what ends; "correct" only what is right.
    The stop string " " ends most random solutions quickly; none of them is right."""
    teacher, scorer = backends
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=3, stop_strings=(" ",))
    make = {"gen_ssd": lambda s: GenSSDConfig(chunk_tokens=6, num_candidates=2, sampling=s, suitability="none"),
            "standard_kd": lambda s: StandardKDConfig(num_candidates=2, sampling=s),
            "posthoc": lambda s: PostHocConfig(num_candidates=2, sampling=s)}[method]
    finished = run_method(make(dataclasses.replace(sampling, keep="finished")), PROBLEMS, teacher, scorer)
    ended = [t for t in finished if t.end_reason == "finished"]
    assert ended and all(t.text.endswith(" ") for t in ended)
    assert not any(t.correct for t in ended)
    if method == "posthoc":  # one per problem: the lowest-PPL finished sample
        assert {t.problem_id for t in finished if t.selected} == {t.problem_id for t in ended}
    else:
        assert [t.selected for t in finished] == [t.end_reason == "finished" for t in finished]
    correct_only = run_method(make(sampling), PROBLEMS, teacher, scorer)
    assert not any(t.selected for t in correct_only)
    with pytest.raises(ConfigError, match="keep must be 'correct' or 'finished'"):
        dataclasses.replace(sampling, keep="all").validate(2)
