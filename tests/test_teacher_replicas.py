"""Many requests in flight and many teacher servers, against stub servers on 127.0.0.1
(tests/openai_stub.py) and the tiny student scoring for real (transformers).

What is checked: the stub's peak of open requests equals the in-flight setting; each path keeps to
one server; servers that disagree on the version are refused; a server that dies mid-run has its
paths finished on another, no request is answered twice, and every trajectory is the one a single
server gives (each path is seeded by its problem, the stubs draw by seed)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.engines.openai_backend import OpenAIScorer, OpenAITeacher, ServerUnavailable
from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer
from gen_ssd_dagster.core.errors import ConfigError
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
from gen_ssd_dagster.core.method.selection import run_gen_ssd
from gen_ssd_dagster.core.types import Problem
from gen_ssd_dagster.defs.resources import ModelsResource
from openai_stub import OpenAIStub, nll_of

TEXTS = ["3 + 4 = 7\n", "#### 7", "so 3 plus 4 is seven\n", "then 7 - 1 = 6\n", "#### 6", "and 2 more\n"]
PROBLEMS = [Problem("demo", f"demo-{i}", f"Question number {i}?", "7") for i in range(8)]


def _config() -> GenSSDConfig:
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=3)
    return GenSSDConfig(chunk_tokens=6, num_candidates=2, sampling=sampling, suitability="none")


@pytest.fixture(scope="module")
def scorer(tiny_models):
    return TransformersScorer(ModelSpec(str(tiny_models[1])))


def _sampled(stub: OpenAIStub) -> list[dict]:
    """The stub's sampling requests (the probe is greedy), with their answer's status."""
    return [r for r in stub.requests if r["path"] == "/v1/completions" and r["body"].get("seed") is not None]


def _question(request: dict) -> str:
    return request["body"]["prompt"].split("\n")[0]


def _texts(trajectories) -> list[str]:
    return [t.text for t in trajectories]


@pytest.mark.parametrize("limit", [1, 4, 8])
def test_the_stub_sees_as_many_requests_at_once_as_the_in_flight_setting(limit):
    with OpenAIStub(texts=TEXTS, latency_s=0.2) as stub:
        teacher = ModelsResource(teacher="stub-model", teacher_url=stub.url, teacher_probe=False,
                                 teacher_max_in_flight=limit).make_teacher(ModelSpec("stub-model"))
        session = teacher.start([p.question for p in PROBLEMS[:6]] * 2, 1.0, 1.0, seed=1)
        session.propose(2, [4] * 12, stop_at_newline=True)
    assert len(_sampled(stub)) == 12 and stub.peak == limit


def test_the_served_scorer_keeps_its_in_flight_setting_open(tiny_models):
    with OpenAIStub(model="student", latency_s=0.2, generate=True) as stub:
        scorer = OpenAIScorer(stub.url, "student", tokenizer=str(tiny_models[1]), max_in_flight=3)
        assert scorer.reads_prefix_cache  # one /inference/v1/generate request per row
        got = scorer.nlls([[5, 6, 7]] * 9, [[10, 11]] * 9)
    rows = [r for r in stub.requests if r["path"] == "/inference/v1/generate"]
    assert len(rows) == 1 + 9 and stub.peak == 3
    assert got == [pytest.approx(nll_of(10, 3) + nll_of(11, 4))] * 9


def test_an_in_flight_limit_below_one_names_its_setting():
    with pytest.raises(ConfigError, match=r"models\.teacher_max_in_flight\) must be >= 1, got 0"):
        OpenAITeacher("http://127.0.0.1:9", "m", max_in_flight=0)


def test_servers_that_serve_other_weights_are_refused_naming_both():
    with OpenAIStub() as one, OpenAIStub(weights="w2") as other:
        models = ModelsResource(teacher="stub-model", teacher_url=one.url, teacher_urls=[other.url])
        with pytest.raises(ConfigError) as exc:
            models.make_teacher(ModelSpec("stub-model"))
    message = str(exc.value)
    assert f"{one.url} (models.teacher_url) and {other.url} (models.teacher_urls[0])" in message
    assert "do not serve the same teacher" in message and "probe=" in message


def test_paths_spread_over_the_servers_and_each_keeps_to_one(scorer):
    with OpenAIStub(texts=TEXTS, seeded=True) as alone:
        single = run_gen_ssd(PROBLEMS, OpenAITeacher(alone.url, "stub-model"), scorer, _config(), batch_size=4)
    with OpenAIStub(texts=TEXTS, seeded=True) as a, OpenAIStub(texts=TEXTS, seeded=True) as b:
        teacher = OpenAITeacher([a.url, b.url], "stub-model")
        spread = run_gen_ssd(PROBLEMS, teacher, scorer, _config(), batch_size=4)
    servers = defaultdict(set)
    for name, stub in (("a", a), ("b", b)):
        for request in _sampled(stub):
            servers[_question(request)].add(name)
    assert len(servers) == len(PROBLEMS) and all(len(s) == 1 for s in servers.values())
    assert {"a", "b"} == set.union(*servers.values())  # both served
    assert _texts(spread) == _texts(single) and len(set(_texts(single))) > 1
    assert teacher.router.load == [0, 0]  # every path left its server when it ended


def test_a_server_that_dies_mid_run_has_its_paths_finished_elsewhere(scorer):
    with OpenAIStub(texts=TEXTS, seeded=True) as alone:
        single = run_gen_ssd(PROBLEMS, OpenAITeacher(alone.url, "stub-model"), scorer, _config(), batch_size=4)
    # b answers its version check (models, version, probe) and 5 sampling requests, then only 503s
    with OpenAIStub(texts=TEXTS, seeded=True) as a, OpenAIStub(texts=TEXTS, seeded=True, fail_from=8) as b:
        teacher = OpenAITeacher([a.url, b.url], "stub-model", max_retries=1)
        spread = run_gen_ssd(PROBLEMS, teacher, scorer, _config(), batch_size=4)
    assert _texts(spread) == _texts(single)
    assert [[s.chosen for s in t.steps] for t in spread] == [[s.chosen for s in t.steps] for t in single]
    answered = [r for stub in (a, b) for r in _sampled(stub) if r["status"] == 200]
    # never generated twice: each (path, step) request was answered once, and as often as alone
    keys = [(r["body"]["prompt"], r["body"]["seed"]) for r in answered]
    assert len(keys) == len(set(keys)) == len(_sampled(alone))
    failed = [r for r in _sampled(b) if r["status"] != 200]
    assert failed and teacher.router.down == {1} and teacher.router.moved >= 1
    moved = {_question(r) for r in failed}
    for question in moved:  # after the failure a moved path asks a, and never b again
        on_a = [r["arrived"] for r in _sampled(a) if _question(r) == question]
        last_failure = max(r["arrived"] for r in failed if _question(r) == question)
        assert on_a and max(on_a) > last_failure
        assert all(r["arrived"] <= last_failure for r in _sampled(b) if _question(r) == question)


def test_when_every_server_fails_the_run_says_so(scorer):
    with OpenAIStub(texts=TEXTS, fail_from=3) as a, OpenAIStub(texts=TEXTS, fail_from=3) as b:
        teacher = OpenAITeacher([a.url, b.url], "stub-model", max_retries=0)
        with pytest.raises(ServerUnavailable, match=r"every teacher server failed; the last: cannot reach teacher"):
            run_gen_ssd(PROBLEMS[:2], teacher, scorer, _config())


def test_a_repeated_or_empty_teacher_url_names_its_setting():
    with pytest.raises(ConfigError, match=r"models\.teacher_urls\[0\] repeats the teacher server http://h:8/v1 of "
                                          r"models\.teacher_url"):
        ModelsResource(teacher_url="http://h:8", teacher_urls=["http://h:8/v1"]).teacher_servers()
    with pytest.raises(ConfigError, match=r"models\.teacher_urls\[1\] is empty"):
        ModelsResource(teacher_urls=["http://h:8", ""]).teacher_servers()
