"""One command that checks a GPU machine: teacher, scorer and training speed on CUDA against the CPU.

On the demo world (questions and worked solutions built on the spot) and a random-weight model of
SmolLM2-135M's shape (Llama: hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocabulary
49152, tied embeddings), it measures in one run:
  - teacher tokens/s: `TransformersTeacher` sampling paths x K candidates (KV cache kept);
  - scorer tokens/s: `TransformersScorer` scoring K whole solutions per path, step after step;
  - training tokens/s: a plain AdamW loop (bf16 autocast on CUDA, `devices.autocast_dtype`);
  - the model's FLOP/s (2N per token for inference, 6N for training; attention not counted) as a
    fraction of the device's matmul rate measured in the same run (bf16 on CUDA, fp32 on CPU);
  - and that CUDA's float32 NLLs equal the CPU's (max relative difference).
It writes a markdown table to stdout and to --out. Without CUDA it still runs, with the CPU
column only ("no CUDA: GPU columns not measured"). It imports torch, transformers, accelerate
and the package's core only, and fails if dagster, duckdb, mlflow or vllm got imported.

It has NEVER run on a GPU: the project's machines have none. Sized to take under 5 minutes on
one GPU (the CPU column included); --quick is a seconds-long run on tiny sizes (the test's).

    .venv/bin/python benchmarks/gpu_check.py --out gpu_check.md [--quick] [--cpu-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from gen_ssd_dagster.core.demo.models import train_tokenizer
from gen_ssd_dagster.core.demo.world import STYLES, generate_problems, render_solution
from gen_ssd_dagster.core.engines.devices import autocast_dtype
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model
from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher

FORBIDDEN = ("dagster", "duckdb", "mlflow", "vllm")
NO_CUDA = "no CUDA: GPU columns not measured"


@dataclasses.dataclass(frozen=True)
class Sizes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    paths: int  # questions per teacher/scorer batch
    k: int  # candidates per path
    new_tokens: int  # teacher tokens per candidate
    score_steps: int  # scorer steps (K solutions scored, one accepted) per session
    train_batch: int
    train_seq: int
    train_steps: dict  # device type -> timed steps (the CPU's are few: a 135M step takes seconds there)
    matmul: int  # n of the n x n matmul that measures the device's rate


SMOLLM2_SHAPE = Sizes(576, 30, 9, 3, 1536, 49152, paths=16, k=4, new_tokens=64, score_steps=4,
                      train_batch=8, train_seq=256, train_steps={"cuda": 10, "cpu": 2}, matmul=8192)
# A vocabulary wider than the tokenizer, as in the full run: ids past it decode to nothing.
QUICK = Sizes(64, 2, 4, 2, 128, 2048, paths=2, k=2, new_tokens=8, score_steps=2,
              train_batch=2, train_seq=32, train_steps={"cuda": 2, "cpu": 2}, matmul=256)


def build_model(out: Path, sizes: Sizes, texts: list[str]) -> tuple[Path, int]:
    """A random-weight Llama of `sizes` with a tokenizer trained on the demo world; (path, params)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(texts, min(sizes.vocab, 1000))  # the rest of the vocabulary is never written
    config = LlamaConfig(
        vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def demo_inputs(sizes: Sizes) -> tuple[list[str], list[list[str]], list[str]]:
    """Demo-world questions (one per path), K worked solutions of each in different styles (what
    the scorer scores), and the texts the tokenizer is trained on."""
    problems = generate_problems(max(sizes.paths, 64), seed=0, split="train")
    rng = random.Random(0)
    solutions = [[render_solution(p, STYLES[i % len(STYLES)], rng) for i in range(sizes.k)] for p in problems[:sizes.paths]]
    texts = [p.question + "\n" + render_solution(p, s, rng) for p in problems for s in STYLES]
    return [p.question for p in problems[:sizes.paths]], solutions, texts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start


def teacher_rate(teacher: TransformersTeacher, questions: list[str], sizes: Sizes) -> float:
    device = teacher.model.device

    def sample(qs, n_tokens):
        session = teacher.start(qs, temperature=1.0, top_p=0.95, seed=0)
        return sum(p.tokens for row in session.propose(sizes.k, [n_tokens] * len(qs), False) for p in row)

    sample(questions[:1], 2)  # warm-up: kernels, allocator
    tokens, seconds = timed(device, lambda: sample(questions, sizes.new_tokens))
    return tokens / seconds


def scorer_run(scorer: TransformersScorer, questions: list[str], solutions: list[list[str]],
               sizes: Sizes) -> tuple[float, list[float]]:
    """(scored tokens/s, every NLL) over `score_steps` steps of K solutions per path."""
    device = scorer.model.device
    ends = [[False] * sizes.k for _ in questions]

    def score(qs, sols):
        session, nlls, tokens = scorer.start(qs), [], 0
        for _ in range(sizes.score_steps):
            for row in session.score(sols, ends[:len(qs)]):
                nlls += [s.nll for s in row]
                tokens += sum(s.tokens for s in row)
            session.accept([0] * len(qs))
        return tokens, nlls

    score(questions[:1], solutions[:1])  # warm-up
    (tokens, nlls), seconds = timed(device, lambda: score(questions, solutions))
    return tokens / seconds, nlls


def training_rate(spec: ModelSpec, sizes: Sizes) -> float:
    """Training tokens/s of a plain AdamW loop on random ids, bf16 autocast where `autocast_dtype` says."""
    model = load_model(spec).train()
    device, vocab = model.device, model.config.vocab_size
    cast = autocast_dtype(device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, vocab, (sizes.train_batch, sizes.train_seq), generator=gen).to(device)
        with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state, kernels
    n = sizes.train_steps[device.type]
    _, seconds = timed(device, lambda: [step() for _ in range(n)])
    return n * sizes.train_batch * sizes.train_seq / seconds


def matmul_rate(device: torch.device, n: int) -> float:
    """FLOP/s of an n x n matmul: bf16 on CUDA (what the tensor cores are rated for), fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b, c = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(3))

    def run(reps):
        for _ in range(reps):
            torch.matmul(a, b, out=c)  # into one buffer: hundreds of results would not fit on the GPU

    run(1)
    reps, seconds = 1, 0.0
    while seconds < 0.5:  # enough repetitions to time
        reps *= 2
        _, seconds = timed(device, lambda: run(reps))
    return 2 * n ** 3 * reps / seconds


def measure(device: torch.device, path: Path, n_params: int, questions, solutions, sizes: Sizes) -> dict:
    spec = ModelSpec(str(path), device=str(device))
    bf16 = dataclasses.replace(spec, dtype="bfloat16")
    row = {"matmul": matmul_rate(device, sizes.matmul),
           "teacher fp32": teacher_rate(TransformersTeacher(spec), questions, sizes)}
    row["scorer fp32"], row["nlls"] = scorer_run(TransformersScorer(spec), questions, solutions, sizes)
    if device.type == "cuda":  # bf16 on CPU depends on the CPU's bf16 support: not this check's question
        row["teacher bf16"] = teacher_rate(TransformersTeacher(bf16), questions, sizes)
        row["scorer bf16"], _ = scorer_run(TransformersScorer(bf16), questions, solutions, sizes)
    row["training"] = training_rate(spec, sizes)
    row["params"] = n_params
    return row


ROWS = (("teacher fp32", "teacher tokens/s (float32)", 2), ("teacher bf16", "teacher tokens/s (bfloat16 spec)", 2),
        ("scorer fp32", "scorer tokens/s (float32)", 2), ("scorer bf16", "scorer tokens/s (bfloat16 spec)", 2),
        ("training", "training tokens/s (float32 weights; CUDA: bf16 autocast)", 6))


def table(cpu: dict, gpu: dict | None, sizes: Sizes, gpu_name: str) -> str:
    n = cpu["params"]
    head = [f"Model: random Llama, {n / 1e6:.1f}M parameters (hidden {sizes.hidden}, {sizes.layers} layers, "
            f"vocab {sizes.vocab}); teacher {sizes.paths} paths x K={sizes.k} x {sizes.new_tokens} tokens, "
            f"scorer {sizes.score_steps} steps of K={sizes.k}, training {sizes.train_batch} x {sizes.train_seq}.",
            f"CPU: {torch.get_num_threads()} threads; GPU: {gpu_name}. Model FLOP/s = 2N (inference) or 6N "
            "(training) per token, N the parameters; 'of matmul' divides by the device's matmul rate "
            "measured in this run (CPU fp32, CUDA bf16).", ""]
    lines = ["| measure | CPU | of CPU matmul | CUDA | of CUDA bf16 matmul | CUDA / CPU |", "|---|---|---|---|---|---|"]
    for key, label, flops in ROWS:
        c, g = cpu.get(key), (gpu or {}).get(key)
        cells = [f"{c:,.0f}" if c else "—", f"{c * flops * n / cpu['matmul']:.1%}" if c else "—"]
        if gpu is None:
            cells += ["not measured", "not measured", "—"]
        else:
            cells += [f"{g:,.0f}" if g else "—", f"{g * flops * n / gpu['matmul']:.1%}" if g else "—",
                      f"{g / c:.1f}x" if g and c else "—"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"| matmul TFLOP/s (CPU fp32, CUDA bf16) | {cpu['matmul'] / 1e12:.3g} | | "
                 + (f"{gpu['matmul'] / 1e12:.3g} | | |" if gpu else "not measured | | |"))
    tail = [""]
    if gpu is None:
        tail.append(NO_CUDA)
    else:
        diff = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(gpu["nlls"], cpu["nlls"]))
        tail.append(f"Scorer NLLs, CUDA vs CPU (float32): max relative difference {diff:.2e} over {len(cpu['nlls'])} candidates.")
    return "\n".join(head + lines + tail) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds on a CPU (the test)")
    parser.add_argument("--cpu-only", action="store_true", help="measure the CPU even where CUDA is present")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else SMOLLM2_SHAPE
    started = time.perf_counter()

    questions, solutions, texts = demo_inputs(sizes)
    use_cuda = torch.cuda.is_available() and not args.cpu_only
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        path, n_params = build_model(Path(tmp) / "model", sizes, texts)
        gpu = measure(torch.device("cuda", 0), path, n_params, questions, solutions, sizes) if use_cuda else None
        cpu = measure(torch.device("cpu"), path, n_params, questions, solutions, sizes)
    name = torch.cuda.get_device_name(0) if use_cuda else ("present, not measured (--cpu-only)" if
                                                               torch.cuda.is_available() else "none")
    report = table(cpu, gpu, sizes, name) + f"\nTook {time.perf_counter() - started:.0f} s.\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    leaked = sorted(m for m in FORBIDDEN if m in sys.modules)
    if leaked:
        print(f"gpu_check imported {', '.join(leaked)}: it must run on torch, transformers and the core only",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
