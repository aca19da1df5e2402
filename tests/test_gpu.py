"""The models on a CUDA GPU: placed there, computing what the CPU computes, sampling reproducibly.

Every test here is marked `gpu`: it skips (saying why) where torch sees no CUDA device, fails
under GEN_SSD_EXPECT_GPU=1 then, and cannot skip under CI=true where CUDA is present
(tests/conftest.py). None of them has run on a GPU yet: the project's machines have none.
"""

import dataclasses

import pytest
import torch

from gen_ssd_dagster.core.engines.devices import attention_implementation, autocast_dtype, resolve_device
from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer, model_version
from gen_ssd_dagster.core.engines.transformers_backend import TransformersScorer, TransformersTeacher
from gen_ssd_dagster.core.errors import ConfigError
from test_kv_batch import padded_two_step_logprobs

pytestmark = pytest.mark.gpu


def test_model_is_placed_on_the_gpu(tiny_models):
    spec = ModelSpec(str(tiny_models[0]), device="cuda")
    model = load_model(spec)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert model.config._attn_implementation == "sdpa"  # float32: flash_attention_2 has no kernel for it
    assert model_version(spec) == model_version(dataclasses.replace(spec, device="cpu"))
    assert ModelSpec(str(tiny_models[0])).device == "auto" and resolve_device("auto").type == "cuda"


def test_padded_kv_batch_on_gpu_matches_cpu(tiny_models):
    spec = ModelSpec(str(tiny_models[0]))
    tok = load_tokenizer(spec)
    cpu, rows = padded_two_step_logprobs(load_model(dataclasses.replace(spec, device="cpu")), tok)
    gpu, _ = padded_two_step_logprobs(load_model(dataclasses.replace(spec, device="cuda")), tok)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-3), (gpu.cpu() - cpu).abs().max()


def test_auto_map_places_and_scores_like_cpu(tiny_models):
    spec = ModelSpec(str(tiny_models[0]))
    tok = load_tokenizer(spec)
    mapped = load_model(dataclasses.replace(spec, device="auto-map"))
    assert mapped.device.type == "cuda"
    cpu, _ = padded_two_step_logprobs(load_model(dataclasses.replace(spec, device="cpu")), tok)
    got, _ = padded_two_step_logprobs(mapped, tok)
    assert torch.allclose(got.cpu(), cpu, atol=1e-3)


def test_bf16_kernel_on_gpu_matches_eager(tiny_models):
    """A bfloat16 spec on CUDA gets flash_attention_2 where flash_attn is installed, else SDPA:
    either must give eager's numbers with padding inside rows, to bf16's precision."""
    spec = ModelSpec(str(tiny_models[0]), dtype="bfloat16", device="cuda")
    tok = load_tokenizer(spec)
    chosen = load_model(spec)
    assert chosen.config._attn_implementation == attention_implementation(torch.device("cuda"), torch.bfloat16)
    got, _ = padded_two_step_logprobs(chosen, tok)
    want, _ = padded_two_step_logprobs(load_model(spec, attn_implementation="eager"), tok)
    assert torch.allclose(got, want, atol=0.1), (got - want).abs().max()
    assert autocast_dtype(torch.device("cuda")) in (torch.bfloat16, None)


def test_teacher_sampling_on_gpu_is_seeded(tiny_models):
    teacher = TransformersTeacher(ModelSpec(str(tiny_models[0]), device="cuda"))
    assert teacher.model.device.type == "cuda"

    def sample(seed):
        session = teacher.start(["Mia has 7 apples.", "Tom"], temperature=1.0, top_p=0.9, seed=seed)
        return [[p.text for p in row] for row in session.propose(3, [12, 12], stop_at_newline=False)]

    first = sample(7)
    assert first == sample(7)
    assert first != sample(8)
    assert sum(len(t) for row in first for t in row) > 0


def test_scorer_on_gpu_matches_cpu(tiny_models):
    candidates, ends = [["7 + 5 = 12\n", "x", "9 9 9"]], [[False, True, False]]
    scores = {}
    for device in ("cpu", "cuda"):
        scorer = TransformersScorer(ModelSpec(str(tiny_models[1]), device=device))
        scores[device] = scorer.start(["Mia has 7 apples."]).score(candidates, ends)[0]
    assert [s.nll for s in scores["cuda"]] == pytest.approx([s.nll for s in scores["cpu"]], rel=1e-3)


def test_a_gpu_beyond_the_count_is_a_clear_error(tiny_models):
    with pytest.raises(ConfigError, match=r"models.teacher_device is 'cuda:99' but this machine has \d+ CUDA device"):
        resolve_device("cuda:99", "models.teacher_device")
    with pytest.raises(ConfigError, match="ModelSpec.device is 'cuda:99'"):
        load_model(ModelSpec(str(tiny_models[0]), device="cuda:99"))
