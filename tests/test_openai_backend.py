"""The OpenAI-compatible backend against a small real HTTP server on 127.0.0.1 (tests/openai_stub.py).

No vLLM needed: what is tested here is the client side (the request bodies, retries, timeouts, the
errors and what they say, which headers leave the machine). That the answers of a real `vllm serve`
give the transformers scorer's NLLs is tests/test_vllm.py's job.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.engines.openai_backend import (
    PROBE_QUESTION,
    OpenAIScorer,
    OpenAITeacher,
    ServerModelMismatch,
    ServerUnavailable,
    _proposal,
)
from gen_ssd_dagster.core.errors import ConfigError
from openai_stub import OpenAIStub, nll_of

KEY = "sk-test-Zq8vN3secretKEY-1234"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_teacher_asks_for_k_candidates_and_reads_vllm_fields():
    with OpenAIStub(texts=["3 + 4 = 7\n", "#### 7", "so 3 plus 4 is seven\n"]) as stub:
        teacher = OpenAITeacher(stub.url + "/v1", "stub-model", probe=False)  # with or without /v1
        assert teacher.version == "stub-model root=/weights/stub vllm=0.0.stub"
        session = teacher.start(["q1", "q2"], temperature=0.8, top_p=0.9, seed=3)
        first = session.propose(3, [5, 3], stop_at_newline=True)
        session.accept([1, None])
        second = session.propose(2, [5], stop_at_newline=False)

    # path 1: the newline stop (not the end), EOS (the end), cut at max_tokens
    assert [(p.text, p.tokens, p.ended) for p in first[0]] == [
        ("3 + 4 = 7\n", 5, False), ("#### 7", 2, True), ("so 3 plus 4 is", 5, False)]
    assert [(p.text, p.ended) for p in first[1]] == [("3 + 4", False), ("#### 7", True), ("so 3 plus", False)]
    assert [p.text for p in second[0]] == ["3 + 4 = 7\n", "#### 7"]

    posts = [r["body"] for r in stub.requests if r["path"] == "/v1/completions"]
    assert len(posts) == 3
    by_prompt = {b["prompt"]: b for b in posts[:2]}
    one = by_prompt["Question: q1\nAnswer:\n"]
    assert one == {"model": "stub-model", "prompt": "Question: q1\nAnswer:\n", "n": 3, "max_tokens": 5,
                   "temperature": 0.8, "top_p": 0.9, "logprobs": 0, "seed": one["seed"], "stop": ["\n"],
                   "include_stop_str_in_output": True}  # vLLM's field goes as it is
    assert by_prompt["Question: q2\nAnswer:\n"]["seed"] != one["seed"]  # each path its own seed
    assert posts[2]["prompt"] == "Question: q1\nAnswer:\n#### 7"  # the accepted chunk is re-sent
    assert "stop" not in posts[2] and posts[2]["n"] == 2


def test_greedy_sends_no_seed_and_a_spent_path_asks_nothing():
    with OpenAIStub() as stub:
        session = OpenAITeacher(stub.url, "stub-model", probe=False).start(["q1", "q2"], 0.0, 0.9, seed=3)
        proposals = session.propose(2, [4, 0], stop_at_newline=True)
    posts = [r["body"] for r in stub.requests if r["path"] == "/v1/completions"]
    assert len(posts) == 1 and "seed" not in posts[0]
    assert posts[0]["temperature"] == 0.0 and posts[0]["top_p"] == 1.0
    assert [(p.text, p.tokens) for p in proposals[1]] == [("", 0), ("", 0)]


def test_proposal_tells_eos_from_the_newline_stop():
    vllm_eos = {"text": "#### 7", "logprobs": {"tokens": ["#", "7"]}, "finish_reason": "stop", "stop_reason": None}
    vllm_nl = {"text": "a\n", "logprobs": {"tokens": ["a", "\n"]}, "finish_reason": "stop", "stop_reason": "\n"}
    other_nl = {"text": "a\n", "token_ids": [1, 2], "finish_reason": "stop"}  # a server without stop_reason
    cut = {"text": "a b", "logprobs": {"tokens": ["a", "b"]}, "finish_reason": "length", "stop_reason": None}
    assert (_proposal(vllm_eos, True).ended, _proposal(vllm_eos, True).tokens) == (True, 2)
    assert _proposal(vllm_nl, True).ended is False
    assert (_proposal(other_nl, True).ended, _proposal(other_nl, True).tokens) == (False, 2)
    assert _proposal(other_nl, False).ended is True
    assert _proposal(cut, True).ended is False


def test_scorer_sums_prompt_logprobs_of_the_candidate_positions(tiny_models):
    with OpenAIStub(model="student") as stub:
        scorer = OpenAIScorer(stub.url, "student", tokenizer=str(tiny_models[1]))
        prefixes = [[5, 6, 7], [8, 9], [1]]
        pieces = [[10, 11], [], [12, 13, 14]]
        got = scorer.nlls(prefixes, pieces)
    body = [r["body"] for r in stub.requests if r["path"] == "/v1/completions"][-1]  # the first: a probe
    assert body["prompt"] == [[5, 6, 7, 10, 11], [1, 12, 13, 14]]  # the empty piece is not sent
    assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
    assert got[1] == 0.0
    assert got[0] == pytest.approx(nll_of(10, 3) + nll_of(11, 4))
    assert got[2] == pytest.approx(nll_of(12, 1) + nll_of(13, 2) + nll_of(14, 3))


# ---------------------------------------------------------------- what identifies the served teacher

def _posts(stub: OpenAIStub) -> list[dict]:
    return [r["body"] for r in stub.requests if r["path"] == "/v1/completions"]


def test_new_weights_behind_the_same_name_root_and_server_are_a_new_version():
    with OpenAIStub() as stub:
        first, again = (OpenAITeacher(stub.url, "stub-model").version for _ in range(2))
        stub.weights = "w2"  # same model id, root and server version
        swapped = OpenAITeacher(stub.url, "stub-model").version
    assert re.fullmatch(r"stub-model root=/weights/stub vllm=0\.0\.stub probe=[0-9a-f]{10}", first)
    assert again == first
    assert swapped != first and swapped.split(" probe=")[0] == first.split(" probe=")[0]
    probes = _posts(stub)
    assert len(probes) == 3  # one request per version read
    assert probes[0] == {"model": "stub-model", "prompt": f"Question: {PROBE_QUESTION}\nAnswer:\n", "n": 1,
                         "max_tokens": 16, "temperature": 0.0, "top_p": 1.0}


def test_declared_version_and_prompt_settings_are_part_of_the_version():
    spec = ModelSpec("stub-model", chat_template="plain", instruction="Show your work.")
    with OpenAIStub() as stub:
        plain = OpenAITeacher(stub.url, "stub-model").version
        declared = OpenAITeacher(stub.url, "stub-model", declared_version="run-7").version
        other = OpenAITeacher(stub.url, "stub-model", declared_version="run-8").version
        prompted = OpenAITeacher(stub.url, "stub-model", declared_version="run-7", spec=spec).version
        unprobed = OpenAITeacher(stub.url, "stub-model", declared_version="run-7", probe=False).version
    assert declared == plain.replace(" probe=", " declared=run-7 probe=") and other != declared
    assert unprobed == "stub-model root=/weights/stub vllm=0.0.stub declared=run-7"
    suffix = spec.prompt_settings.version_suffix()
    assert suffix and prompted.endswith(f" {suffix}") and prompted.startswith(f"{unprobed} probe=")
    # the probe is asked as every question is: with the instruction
    assert "Show your work." in _posts(stub)[-1]["prompt"] and prompted.split()[-2] != declared.split()[-1]


# ---------------------------------------------------------------- retries and timeouts

def test_503s_are_retried_until_the_server_answers():
    with OpenAIStub(fail_first=2) as stub:
        teacher = OpenAITeacher(stub.url, "stub-model", max_retries=2)
    assert teacher.version.startswith("stub-model")
    assert stub.paths()[:3] == ["/v1/models"] * 3


def test_503s_past_max_retries_say_where_how_often_and_what_the_server_said():
    with OpenAIStub(fail_first=10) as stub:
        with pytest.raises(ServerUnavailable) as exc:
            OpenAITeacher(stub.url, "stub-model", max_retries=1, url_setting="models.teacher_url")
    assert stub.paths() == ["/v1/models"] * 2
    message = str(exc.value)
    assert message.startswith(f"cannot reach teacher server at {stub.url}/v1/models (models.teacher_url) "
                              "after 2 tries (max_retries=1): HTTP 503")
    assert "stub failure 2" in message and exc.value.__cause__ is None


def test_a_late_answer_times_out_and_is_retried():
    with OpenAIStub(delay_first=1, delay_s=1.5) as stub:
        with pytest.raises(ServerUnavailable, match=r"after 1 try \(max_retries=0\): no answer within timeout_s=0.3s"):
            OpenAITeacher(stub.url, "stub-model", timeout_s=0.3, max_retries=0)
    with OpenAIStub(delay_first=1, delay_s=1.5) as stub:  # the first answer comes late, the second at once
        teacher = OpenAITeacher(stub.url, "stub-model", timeout_s=0.3, max_retries=1)
    assert teacher.version.startswith("stub-model") and stub.paths()[:2] == ["/v1/models"] * 2


def test_server_down_fails_after_retries():
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(ServerUnavailable,
                       match=f"cannot reach teacher server at {url}/v1/models \\(teacher_url\\) after 3 tries"):
        OpenAITeacher(url, "m", max_retries=2)


def _dropping_server(arrivals: list[float]) -> tuple[str, threading.Thread, socket.socket]:
    """A server that takes each connection and closes it without a word, recording when it came."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed by the test
                return
            arrivals.append(time.monotonic())
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", thread, server


def test_a_dropped_connection_is_retried_with_backoff():
    arrivals: list[float] = []
    url, thread, server = _dropping_server(arrivals)
    try:
        with pytest.raises(ServerUnavailable, match=r"after 3 tries \(max_retries=2\)"):
            OpenAITeacher(url, "m", max_retries=2)
    finally:
        server.close()
        thread.join(timeout=10)
    assert len(arrivals) == 3  # the first try and two retries reached the server, no more
    # A backoff is a wait, and a wait is only observable as time: the gaps between the arrivals the
    # server recorded. They are lower bounds (0.5 s then 1 s, less up to 25% jitter), which a slow
    # machine can only lengthen, so the check does not depend on the machine's speed.
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert gaps[0] >= 0.375 and gaps[1] >= 0.75


def test_retry_after_is_honoured():
    # The server asks for 1.5 s, three times the SDK's own first backoff (0.5 s less jitter): the
    # retry's arrival, recorded by the server, comes no sooner (a lower bound, as above).
    with OpenAIStub(fail_first=1, retry_after_ms=1500) as stub:
        teacher = OpenAITeacher(stub.url, "stub-model", max_retries=1, probe=False)
    assert teacher.version.startswith("stub-model")
    first, retry = stub.requests[:2]
    assert first["path"] == retry["path"] == "/v1/models"
    assert retry["arrived"] - first["arrived"] >= 1.5


def test_the_wrong_model_is_named():
    with OpenAIStub() as stub:
        with pytest.raises(ServerModelMismatch, match=r"serves \['stub-model'\], not the configured model 'other'"):
            OpenAITeacher(stub.url, "other")


# ---------------------------------------------------------------- keys and what leaves the machine

def test_the_key_is_sent_as_bearer_and_nothing_from_the_openai_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-machine-wide-LEAK")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-LEAK")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-LEAK")
    with OpenAIStub(api_key=KEY) as stub:
        OpenAITeacher(stub.url, "stub-model", api_key=KEY).start(["q"], 1.0, 1.0, 0).propose(2, [3], True)
    with OpenAIStub() as keyless:
        OpenAITeacher(keyless.url, "stub-model").start(["q"], 1.0, 1.0, 0).propose(2, [3], True)
    for request in stub.requests + keyless.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert "LEAK" not in repr(headers)
        assert "openai-organization" not in headers and "openai-project" not in headers
        assert headers.get("authorization") == (f"Bearer {KEY}" if request in stub.requests else None)


def test_a_rejected_key_is_not_retried_nor_repeated():
    wrong = "sk-wrong-Pp2secretOTHER-9876"
    with OpenAIStub(api_key=KEY) as stub:  # it echoes the key it got
        with pytest.raises(ConfigError) as exc:
            OpenAITeacher(stub.url, "stub-model", api_key=wrong)
    assert stub.paths() == ["/v1/models"]
    message = str(exc.value)
    assert "rejected the request (401)" in message and "API key" in message and "(teacher_url)" in message
    assert wrong not in message and "Bearer ***" in message and exc.value.__cause__ is None


def test_credentials_in_the_url_are_refused_and_not_repeated():
    with OpenAIStub(api_key=KEY) as stub:
        url = stub.url.replace("http://", "http://user:hunter2@")
        with pytest.raises(ConfigError) as exc:
            OpenAITeacher(url, "stub-model", api_key=KEY)
    assert stub.requests == []  # nothing was sent
    assert "hunter2" not in str(exc.value) and "http://***@127.0.0.1" in str(exc.value)


def test_a_secret_in_the_query_is_not_repeated():
    url = f"http://127.0.0.1:{_free_port()}/v1?api_key=qs-SECRET-42"
    with pytest.raises(ServerUnavailable) as exc:
        OpenAITeacher(url, "m", max_retries=0)
    assert "qs-SECRET-42" not in str(exc.value) and "api_key=***" in str(exc.value)
