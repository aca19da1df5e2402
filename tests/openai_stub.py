"""A small OpenAI-compatible completions server on 127.0.0.1 for tests that need no vLLM.

Standard library only (http.server). It answers `/v1/models`, vLLM's `/version` and
`/v1/completions` in the shape vLLM gives them (`stop_reason`, `prompt_logprobs` when asked), and can
with `generate=True` vLLM's `/inference/v1/generate` (token ids in, prompt log-probs out, nothing
cached), and can
misbehave on purpose: fail the first N requests with a status (503 by default), answer the first N
late (a timeout), fail every request from the Nth on (a server that dies mid-run), want a Bearer key
and echo a wrong one back as some servers do. Every request is recorded (path, headers, JSON body,
arrival time, the answer's status) for the test to look at; `latency_s` holds each completion that
long, and `peak` is the most completions it held open at once. `seeded`: a sampled candidate depends
on the request's seed (texts[(seed + i) % len]), so the same seed draws the same on any stub.

Its `weights` stand for what it loaded: a greedy request (temperature 0) is answered from them, so
swapping `weights` is serving new weights under the same model id, root and server version.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def nll_of(token: int, pos: int) -> float:
    """The stub student's NLL of `token` at position `pos` of a prompt (what `prompt_logprobs` says)."""
    return 0.01 * (token % 7 + 1) + 0.001 * pos


class OpenAIStub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: str = "stub-model", root: str | None = "/weights/stub", texts: list[str] | None = None,
                 fail_first: int = 0, fail_status: int = 503, delay_first: int = 0, delay_s: float = 0.0,
                 api_key: str | None = None, retry_after_ms: int | None = 20, server_version: str | None = "0.0.stub",
                 weights: str = "w1", latency_s: float = 0.0, fail_from: int | None = None, seeded: bool = False,
                 generate: bool = False):
        self.model, self.root, self.server_version, self.weights = model, root, server_version, weights
        self.texts = texts or ["3 + 4 = 7\n", "#### 7"]  # candidate i of a request is texts[i % len]
        self.fail_first, self.fail_status, self.retry_after_ms = fail_first, fail_status, retry_after_ms
        self.delay_first, self.delay_s = delay_first, delay_s
        self.api_key = api_key
        self.latency_s, self.fail_from, self.seeded, self.generate = latency_s, fail_from, seeded, generate
        self.requests: list[dict] = []
        self.open = self.peak = 0  # completions being answered now, and the most at once
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    request_queue_size = 256  # connections waiting to be accepted: many requests arrive at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def __enter__(self) -> "OpenAIStub":
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIStub
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server: a connection per request would be the bottleneck

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
            pass

    def _arrive(self, body: dict | None) -> bool:
        """Record the request; answer it with a failure if it is one of the first N. True: go on."""
        stub = self.server
        with stub.lock:
            n = len(stub.requests)
            self.record = {"path": self.path, "headers": dict(self.headers), "body": body,
                           "arrived": time.monotonic(), "status": 200}
            stub.requests.append(self.record)
        if n < stub.delay_first:
            time.sleep(stub.delay_s)
        if n < stub.fail_first or (stub.fail_from is not None and n >= stub.fail_from):
            self.record["status"] = stub.fail_status
            extra = {"retry-after-ms": str(stub.retry_after_ms)} if stub.retry_after_ms is not None else {}
            self._send(stub.fail_status, {"error": {"message": f"stub failure {n + 1}", "code": stub.fail_status}},
                       extra)
            return False
        if stub.api_key is not None:
            got = self.headers.get("Authorization", "")
            if got != f"Bearer {stub.api_key}":
                self.record["status"] = 401
                self._send(401, {"error": {"message": f"invalid api key: {got}"}})
                return False
        return True

    def do_GET(self):
        if not self._arrive(None):
            return
        stub = self.server
        if self.path == "/v1/models":
            card = {"id": stub.model, "object": "model", "created": 0, "owned_by": "stub"}
            if stub.root:
                card["root"] = stub.root
            self._send(200, {"object": "list", "data": [card]})
        elif self.path == "/version" and stub.server_version:
            self._send(200, {"version": stub.server_version})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self._arrive(body):
            return
        if self.path not in ("/v1/completions", "/inference/v1/generate" if self.server.generate else None):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        stub = self.server
        with stub.lock:
            stub.open += 1
            stub.peak = max(stub.peak, stub.open)
        try:
            time.sleep(stub.latency_s)
            if self.path == "/inference/v1/generate":  # vLLM's token-in endpoint: one prompt, nothing cached
                answer = _scored({"prompt": [body["token_ids"]]})["choices"][0]
                answer["usage"] = {"prompt_tokens": len(body["token_ids"]), "prompt_tokens_details": {"cached_tokens": 0}}
            elif body.get("prompt_logprobs") is not None:
                answer = _scored(body)
            else:
                answer = _sampled(stub, body)
            self._send(200, answer)
        finally:
            with stub.lock:
                stub.open -= 1


def _sampled(stub: OpenAIStub, body: dict) -> dict:
    """n candidates, one a text of `stub.texts` (greedy: the answer of `stub.weights` to the prompt),
    cut at `max_tokens` words; vLLM's stop fields."""
    choices = []
    greedy = f"42 by {stub.weights} for {len(body['prompt'])} chars"
    for i in range(body.get("n", 1)):
        pick = (body.get("seed", 0) + i if stub.seeded else i) % len(stub.texts)
        words = (greedy if body.get("temperature") == 0 else stub.texts[pick]).split(" ")
        cut = words[: body["max_tokens"]]
        text = " ".join(cut)
        if cut != words:
            finish, stop_reason = "length", None
        elif text.endswith("\n") and body.get("stop"):
            finish, stop_reason = "stop", "\n"
        else:
            finish, stop_reason = "stop", None  # EOS
        logprobs = {"tokens": cut, "token_logprobs": [-0.5] * len(cut), "top_logprobs": None,
                    "text_offset": list(range(len(cut)))} if body.get("logprobs") is not None else None
        choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish,
                        "stop_reason": stop_reason})
    return {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": body.get("model"),
            "choices": choices}


def _scored(body: dict) -> dict:
    """vLLM's `prompt_logprobs` for each token-id prompt: None first, then {str(id): {logprob}}."""
    prompts = body["prompt"]
    choices = []
    for i, ids in enumerate(prompts):
        per_pos = [None] + [{str(t): {"logprob": -nll_of(t, pos), "rank": 1, "decoded_token": "x"}}
                            for pos, t in enumerate(ids) if pos > 0]
        choices.append({"index": i, "text": "x", "logprobs": None, "finish_reason": "length", "stop_reason": None,
                        "prompt_logprobs": per_pos})
    return {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": body.get("model"),
            "choices": choices}
