"""Path-level continuous batching: a path that ends gives its slot to the next problem at once, and a
path's trajectory depends on its problem alone, not on the paths that ran beside it.

Real tiny transformers models (tests/conftest.py); the vLLM and served sessions are in test_vllm.py.
"""

import pytest

from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
from gen_ssd_dagster.core.method.selection import iter_gen_ssd, run_gen_ssd
from gen_ssd_dagster.core.types import Problem

QUESTIONS = ["Mia has 7 apples. She buys 5 more.", "Tom has 12 pears.", "What is 8 * 2?", "Tom has 3 pens.",
             "Mia has 9 pears and gives 4 away.", "What is 6 + 7?", "Tom buys 2 apples.", "Mia has 1 pen."]
PROBLEMS = [Problem("demo", f"demo-{i}", q, "12") for i, q in enumerate(QUESTIONS)]


def _config(**kw) -> GenSSDConfig:
    # max_ppl in the middle of the random student's PPLs: some paths are pruned early, others run to
    # the cap, so path lengths vary as they do for real.
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=30, seed=5)
    return GenSSDConfig(chunk_tokens=5, num_candidates=3, sampling=sampling, suitability="absolute", **kw)


class CountingTeacher:
    """The real teacher, recording for every `propose` call how many paths it ran (the slots in use)
    and how many problems had started by then."""

    def __init__(self, teacher):
        self.teacher, self.version = teacher, teacher.version
        self.calls: list[tuple[int, int]] = []
        self.started = 0

    def start(self, questions, *args):
        session, outer = self.teacher.start(questions, *args), self
        self.started += len(questions)

        class Session:
            def propose(self, k, budgets, snap):
                outer.calls.append((len(budgets), outer.started))
                return session.propose(k, budgets, snap)

            def accept(self, chosen):
                session.accept(chosen)

            def add(self, questions, seeds):
                outer.started += len(questions)
                session.add(questions, seeds)

        return Session()


def _same(a, b):
    assert a.text == b.text and a.end_reason == b.end_reason
    assert [s.chosen for s in a.steps] == [s.chosen for s in b.steps]
    assert [[c.text for c in s.candidates] for s in a.steps] == [[c.text for c in s.candidates] for s in b.steps]
    for sa, sb in zip(a.steps, b.steps):
        for ca, cb in zip(sa.candidates, sb.candidates):
            assert ca.nll == pytest.approx(cb.nll, rel=1e-4, abs=1e-4)


def _threshold(backends) -> float:
    """The median first-chunk PPL of the random student: about half the candidates pass."""
    teacher, scorer = backends
    free = run_gen_ssd(PROBLEMS, teacher, scorer, _config(max_ppl=1e9), batch_size=8)
    ppls = sorted(c.ppl for t in free for c in t.steps[0].candidates)
    return ppls[len(ppls) // 2]


def test_a_path_does_not_depend_on_the_paths_beside_it(backends):
    teacher, scorer = backends
    config = _config(max_ppl=_threshold(backends))
    together = run_gen_ssd(PROBLEMS, teacher, scorer, config, batch_size=3)
    wide = run_gen_ssd(PROBLEMS, teacher, scorer, config, batch_size=8)
    alone = [run_gen_ssd([p], teacher, scorer, config, batch_size=1)[0] for p in PROBLEMS[2:5]]
    reversed_ = run_gen_ssd(PROBLEMS[::-1], teacher, scorer, config, batch_size=3)[::-1]
    assert len({len(t.steps) for t in together}) > 1, "paths of equal length test nothing"
    for a, b, c in zip(together, wide, reversed_):
        _same(a, b)
        _same(a, c)
    for a, b in zip(together[2:5], alone):
        _same(a, b)


def test_a_path_that_ends_gives_its_slot_to_the_next_problem(backends):
    teacher, scorer = backends
    config = _config(max_ppl=_threshold(backends))
    counting = CountingTeacher(teacher)
    order = [i for i, _ in iter_gen_ssd(PROBLEMS, counting, scorer, config, slots=3)]
    lengths = [len(t.steps) for t in run_gen_ssd(PROBLEMS, teacher, scorer, config, batch_size=3)]
    assert sorted(order) == list(range(len(PROBLEMS))) and order != sorted(order)  # yielded as they end
    assert sum(n for n, _ in counting.calls) == sum(lengths)  # one proposal per path per step
    # A step runs fewer than 3 paths only once the queue is dry: every problem has started.
    assert all(n == 3 or started == len(PROBLEMS) for n, started in counting.calls), counting.calls

    lock = CountingTeacher(teacher)
    lockstep = run_gen_ssd(PROBLEMS, lock, scorer, config, batch_size=3, lockstep=True)
    for a, b in zip(lockstep, run_gen_ssd(PROBLEMS, teacher, scorer, config, batch_size=3)):
        _same(a, b)  # the schedule changes when paths run, never what they draw
    assert len(lock.calls) > len(counting.calls)  # lockstep waits for the longest path of each group
    assert any(n < 3 and started < len(PROBLEMS) for n, started in lock.calls)
