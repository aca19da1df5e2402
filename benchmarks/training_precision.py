"""bf16 autocast against float32 on this CPU, for the demo's models and for a wider one.

    python benchmarks/training_precision.py [--steps 30]

For each model shape (the demo teacher, 128 wide and 4 layers; the demo student, 96 wide and 2
layers; a SmolLM2-135M-wide one, 576 wide and 6 layers), a randomly initialised Llama takes
`--steps` AdamW steps on random ids (half the rows padded) in float32 and then under bf16 autocast, after 3 warm-up
steps each, in this process with torch's default threads. Printed: ms per step of each and
bf16 / fp32, measured in this run. `fine_tune(bf16=True)` autocasts only where the CPU computes
bf16 natively (`sft.native_bf16`); this says whether it should, per model width.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

# name: (vocab, hidden, layers, heads, batch, tokens per row)
SHAPES = {
    "demo teacher (128 wide, 4 layers)": (512, 128, 4, 4, 16, 72),
    "demo student (96 wide, 2 layers)": (320, 96, 2, 2, 16, 110),
    "SmolLM2-135M width (576 wide, 6 layers)": (8192, 576, 6, 9, 8, 256),
}


def ms_per_step(shape: tuple, bf16: bool, steps: int) -> float:
    vocab, hidden, layers, heads, batch, length = shape
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                                         num_hidden_layers=layers, num_attention_heads=heads,
                                         num_key_value_heads=heads, tie_word_embeddings=True))
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, vocab, (batch, length))
    mask = torch.ones_like(ids)
    mask[::2, -length // 8 :] = 0  # half the rows padded at the end, as `fine_tune`'s batches are

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    from gen_ssd_dagster.core.training.sft import native_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {native_bf16()}")
    print("| model | fp32 ms/step | bf16 autocast ms/step | bf16 / fp32 |\n|---|---:|---:|---:|")
    for name, shape in SHAPES.items():
        fp32 = ms_per_step(shape, False, args.steps)
        bf16 = ms_per_step(shape, True, args.steps)
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f} |", flush=True)


if __name__ == "__main__":
    main()
