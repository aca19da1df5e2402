"""A local checkpoint's version covers every byte of every file, and each file is read once per
file version (core/engines/fingerprint.py, models.weights_version)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import pytest

from gen_ssd_dagster.core.engines.fingerprint import DigestCache
from gen_ssd_dagster.core.engines.models import ModelSpec, is_partial_fingerprint, model_version, weights_version

MIB = 1 << 20
TENSOR = "model.layers.1.self_attn.v_proj.weight"


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny Llama whose model.safetensors (~9 MB) has tensors wholly between its first and last MiB."""
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide") / "teacher", vocab_size=300, hidden=256, layers=4, seed=0)


def _byte_range(weights, name: str) -> tuple[int, int]:
    """Where tensor `name`'s data lies in a safetensors file (8-byte header length, JSON header, data)."""
    with open(weights, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    start, end = header[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def _first_and_last_mib(path) -> str:
    """The fingerprint of earlier releases: name, size and the first and last MiB of each file."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        size = f.stat().st_size
        digest.update(f.name.encode() + str(size).encode())
        with f.open("rb") as fh:
            digest.update(fh.read(MIB))
            if size > 2 * MIB:
                fh.seek(-MIB, 2)
                digest.update(fh.read(MIB))
    return digest.hexdigest()


def _scale(weights, name: str, factor: float) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    tensors[name] = tensors[name] * factor
    save_file(tensors, weights, metadata={"format": "pt"})


def test_a_tensor_in_the_middle_of_a_file_changes_the_version(tmp_path, wide_model):
    teacher = tmp_path / "teacher"
    shutil.copytree(wide_model, teacher)
    weights = teacher / "model.safetensors"
    start, end = _byte_range(weights, TENSOR)
    assert MIB < start and end < weights.stat().st_size - MIB  # outside what the old fingerprint read
    cache = DigestCache(tmp_path / "digests.sqlite")
    before, old_before = weights_version(ModelSpec(str(teacher)), cache), _first_and_last_mib(teacher)

    _scale(weights, TENSOR, 1.5)  # a real change to what the model generates, as a merged LoRA makes
    assert _first_and_last_mib(teacher) == old_before  # the old fingerprint did not see it
    after = weights_version(ModelSpec(str(teacher)), cache)
    assert after != before and after.startswith("teacher@sha256:") and len(after.split(":")[1]) == 16
    # the same bytes elsewhere are the same version (the name is the directory's)
    copy = tmp_path / "copy" / "teacher"
    shutil.copytree(teacher, copy)
    assert weights_version(ModelSpec(str(copy)), cache) == after


def test_an_unchanged_checkpoint_observed_twice_is_read_once(tmp_path, wide_model):
    teacher = tmp_path / "teacher"
    shutil.copytree(wide_model, teacher)
    files = sorted(p for p in teacher.iterdir() if p.is_file())
    first = DigestCache(tmp_path / "digests.sqlite")
    version = weights_version(ModelSpec(str(teacher)), first)
    assert first.reads == len(files)
    assert weights_version(ModelSpec(str(teacher)), first) == version and first.reads == len(files)
    other_process = DigestCache(tmp_path / "digests.sqlite")  # the cache is a file, shared
    assert weights_version(ModelSpec(str(teacher)), other_process) == version and other_process.reads == 0

    # `cp -p` of new weights over the old file: same inode, size and mtime, new ctime: read again
    weights, changed = teacher / "model.safetensors", tmp_path / "changed.safetensors"
    st = weights.stat()
    shutil.copyfile(weights, changed)
    _scale(changed, TENSOR, 2.0)
    shutil.copyfile(changed, weights)  # written into the same inode, as cp does
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns, weights.stat().st_ino) == (
        st.st_size, st.st_mtime_ns, st.st_ino)
    again = DigestCache(tmp_path / "digests.sqlite")
    assert weights_version(ModelSpec(str(teacher)), again) != version and again.reads == 1


def test_sharded_checkpoint_rereads_only_the_changed_shard(tmp_path, wide_model):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(wide_model).save_pretrained(sharded, max_shard_size="3MB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (sharded / "model.safetensors.index.json").is_file()
    cache = DigestCache(tmp_path / "digests.sqlite")
    before = model_version(ModelSpec(str(sharded)))  # the default cache, under $GEN_SSD_FINGERPRINT_CACHE
    assert weights_version(ModelSpec(str(sharded)), cache) + "" == before
    reads = cache.reads

    middle = shards[len(shards) // 2]
    blob = bytearray(middle.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit of one weight
    middle.write_bytes(blob)
    assert weights_version(ModelSpec(str(sharded)), cache) != before and cache.reads == reads + 1


def test_an_unwritable_cache_still_fingerprints(tmp_path, wide_model):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    cache = DigestCache(blocked / "digests.sqlite")  # its parent is a file: no cache, same answer
    assert weights_version(ModelSpec(str(wide_model)), cache) == weights_version(ModelSpec(str(wide_model)))


def test_versions_made_before_whole_content_hashing_are_recognised():
    assert is_partial_fingerprint("teacher-31d46c3a8bbb")
    assert is_partial_fingerprint("student-0123456789ab+prompt-5f2e")
    assert not is_partial_fingerprint("teacher@sha256:31d46c3a8bbb0c1d")
    assert not is_partial_fingerprint("Qwen/Qwen2.5-7B-Instruct@main")
    assert not is_partial_fingerprint("stub-model root=/weights/stub vllm=0.0.stub")
