"""Served-teacher throughput against the number of requests kept in flight: threads vs asyncio.

A stub OpenAI-compatible server (tests/openai_stub.py) runs in its own process and holds every
completion --latency seconds (200 ms: a teacher's step on a busy server) before answering, so the
ideal throughput at in-flight N is N / latency requests per second. For each N of --levels:

* threads: `OpenAITeacher` as the pipeline uses it (`models.teacher_max_in_flight` = N), one
  session of --per-level x N paths stepped --steps times (a thread pool, one sync request per path);
* asyncio: the same request bodies through `openai.AsyncOpenAI`, N at once (a semaphore).

Printed per arm and N: requests/s, the ratio to in-flight 1 of the same arm times N (scaling vs
linear; the goal is >= 0.80 up to 64), and the ratio to the ideal N / latency.

    .venv/bin/python benchmarks/served_teacher_in_flight.py [--latency 0.2] [--levels 1 4 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_stub import OpenAIStub  # noqa: E402

from gen_ssd_dagster.core.engines.openai_backend import OpenAITeacher  # noqa: E402


def serve(latency_s: float, port_queue) -> None:
    stub = OpenAIStub(latency_s=latency_s)
    port_queue.put(stub.server_address[1])
    stub.serve_forever(poll_interval=0.05)


def bodies(n: int) -> list[dict]:
    return [{"model": "stub-model", "prompt": f"Question: {i}?\nAnswer:\n", "n": 4, "max_tokens": 8,
             "temperature": 1.0, "top_p": 0.9, "logprobs": 0, "seed": i, "stop": ["\n"]} for i in range(n)]


def threads(url: str, in_flight: int, paths: int, steps: int) -> float:
    teacher = OpenAITeacher(url, "stub-model", probe=False, max_in_flight=in_flight)
    session = teacher.start([f"{i}?" for i in range(paths)], 1.0, 0.9, seed=0)
    session.propose(4, [8] * paths, True)  # warm: connections opened
    start = time.perf_counter()
    for _ in range(steps):
        session.propose(4, [8] * paths, True)
    return steps * paths / (time.perf_counter() - start)


def asyncio_arm(url: str, in_flight: int, paths: int, steps: int) -> float:
    async def run() -> float:
        limits = httpx.Limits(max_connections=max(1000, in_flight), max_keepalive_connections=max(100, in_flight))
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=3,
                                    http_client=openai.DefaultAsyncHttpxClient(limits=limits))
        gate = asyncio.Semaphore(in_flight)

        async def one(body: dict) -> None:
            async with gate:
                await client.completions.create(**{k: v for k, v in body.items()})

        await asyncio.gather(*(one(b) for b in bodies(paths)))  # warm
        start = time.perf_counter()
        for _ in range(steps):
            await asyncio.gather(*(one(b) for b in bodies(paths)))
        elapsed = time.perf_counter() - start
        await client.close()
        return steps * paths / elapsed

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--per-level", type=int, default=2, help="paths per step = this x in-flight")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    ports = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.latency, ports), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}"
    try:
        results: dict[str, dict[int, float]] = {"threads": {}, "asyncio": {}}
        for n in args.levels:
            paths = args.per_level * n
            results["threads"][n] = threads(url, n, paths, args.steps)
            results["asyncio"][n] = asyncio_arm(url, n, paths, args.steps)
    finally:
        server.terminate()
        server.join()
    print(f"stub latency {args.latency * 1000:.0f} ms per request; ideal = in-flight / latency")
    print(f"{'arm':8} {'in-flight':>9} {'req/s':>8} {'vs linear':>10} {'vs ideal':>9}")
    for arm, by_n in results.items():
        base = by_n[args.levels[0]] / args.levels[0]
        for n, rate in by_n.items():
            print(f"{arm:8} {n:9d} {rate:8.1f} {rate / (base * n):10.2f} {rate * args.latency / n:9.2f}")
    for n in args.levels:
        print(f"in-flight {n}: asyncio / threads = {results['asyncio'][n] / results['threads'][n]:.2f}")


if __name__ == "__main__":
    main()
