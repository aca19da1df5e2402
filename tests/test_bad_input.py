"""Bad input through the pipeline: each run fails with an error naming the file, row or setting,
nothing half-written remains, and what was stored before is intact.

The loader's row-level checks are unit-tested in tests/test_data.py; here the same inputs go
through a Dagster run, plus what only shows up later: run configuration, checkpoints, an enormous
question, a teacher server that is down, and a full disk.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

GOOD = [{"question": f"Tom has {i} pens and buys 2. How many pens?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
        for i in range(6)]
SMALL = {"max_problems": 4, "offset": 0, "batch_size": 2, "num_candidates": 2, "sampling": {"max_new_tokens": 8},
         "chunk_tokens": 4, "suitability": "none"}


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    else:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _run(home, data, models, selection, ops=None, teacher_url=""):
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    lines: list[str] = []
    ops = {"cold_start_student": {"config": {"max_problems": 0}}, "gen_ssd_trajectories": {"config": SMALL},
           **(ops or {})}
    result = run_pipeline(Home.resolve(home), "gsm8k", {"ops": ops},
                          {"models": ModelsResource(teacher=str(models[0]), student=str(models[1]),
                                                    teacher_url=teacher_url),
                           "data": DataResource(data_dir=str(data))},
                          log=lines.append, selection=selection)
    return result, lines


def _failure(result) -> str:
    errors = [e.step_failure_data.error for e in result.all_events if e.is_step_failure]
    assert errors, "the run was expected to fail"
    return "\n".join((err.cause or err).message for err in errors)


def _rows(home, sql):
    from gen_ssd_dagster.store import Home, Store

    return Store(Home.resolve(home).db_path).query(sql)


PROBLEMS_SQL = "SELECT problem_id, question, gold FROM problems WHERE dataset = 'gsm8k' ORDER BY position"


@pytest.fixture(scope="module")
def _home(tmp_path_factory, tiny_models):
    """One home for the module whose gsm8k partition has problems and two committed trajectory batches."""
    root = tmp_path_factory.mktemp("bad_input")
    data, home = root / "data", root / "home"
    _write(data / "gsm8k" / "train.jsonl", GOOD)
    result, lines = _run(home, data, tiny_models, ["teacher", "base_student", "problems", "cold_start_student",
                                                   "gen_ssd_trajectories"])
    assert result.success, lines
    return home, data


@pytest.fixture
def stored(_home, tiny_models):
    """(home, data dir, the problems stored now, the trajectory count now), with the good file back."""
    home, data = _home
    _write(data / "gsm8k" / "train.jsonl", GOOD)
    return home, data, _rows(home, PROBLEMS_SQL), _rows(home, "SELECT count(*) FROM trajectories")[0][0]


BAD_FILES = [
    ("malformed JSON", [GOOD[0], GOOD[1], '{"question": "oops", "answer": '], ["line 3", "malformed JSON"]),
    ("wrong field name", [GOOD[0], GOOD[1], {"problem": "What is 1+1?", "answer": "#### 2"}],
     ["line 3", "missing field 'question'", "question_field", "'problem'"]),
    ("answer that does not parse", [GOOD[0], {"question": "What is 1+1?", "answer": "two"}],
     ["line 2", "answer_field", "answer_format 'gsm8k'"]),
    ("non-UTF-8 bytes", json.dumps(GOOD[0]).encode() + b'\n{"question": "caf\xe9?", "answer": "#### 1"}\n',
     ["line 2", "not UTF-8"]),
    ("zero rows", b"\n\n", ["no rows"]),
]


@pytest.mark.slow
def test_bad_dataset_files_fail_the_run_and_keep_earlier_problems(stored, tiny_models):
    home, data, problems_before, n_traj = stored
    for name, content, needles in BAD_FILES:
        _write(data / "gsm8k" / "train.jsonl", content)
        result, _ = _run(home, data, tiny_models, ["problems"])
        assert not result.success, name
        msg = _failure(result)
        assert "gsm8k/train.jsonl" in msg, (name, msg)
        for needle in needles:
            assert needle in msg, (name, msg)
        assert _rows(home, PROBLEMS_SQL) == problems_before, name  # nothing half-written
    assert _rows(home, "SELECT count(*) FROM trajectories")[0][0] == n_traj


@pytest.mark.slow
def test_enormous_question_fails_its_batch_and_keeps_the_others(stored, tiny_models):
    home, data, _, _ = stored
    rows = [*GOOD[:2], {"question": "How many? " + "Tom has 3 pens. " * 20000, "answer": "#### 3"}, *GOOD[3:]]
    _write(data / "gsm8k" / "train.jsonl", rows)
    ops = {"gen_ssd_trajectories": {"config": {**SMALL, "sampling": {"max_new_tokens": 9}}}}  # a new key: new work
    result, _ = _run(home, data, tiny_models, ["problems", "gen_ssd_trajectories"], ops)
    msg = _failure(result)
    assert "batch of problems [gsm8k-2, gsm8k-3]" in msg and "max_position_embeddings" in msg, msg
    assert len(msg) < 1000  # the question is quoted by its start, not in full
    done = _rows(home, "SELECT problem_id FROM problem_runs WHERE config_hash = (SELECT config_hash FROM"
                       " problem_runs ORDER BY created_at DESC LIMIT 1) ORDER BY 1")
    assert done == [("gsm8k-0",), ("gsm8k-1",)]  # the batch before it is committed, nothing of its own
    _write(data / "gsm8k" / "train.jsonl", GOOD)
    assert _run(home, data, tiny_models, ["problems"])[0].success  # leave the partition as it was


@pytest.mark.slow
def test_on_bad_row_skip_stores_the_good_rows_and_names_the_bad_ones(tmp_path, tiny_models):
    """The same bad rows with `on_bad_row: skip`: the partition keeps the good rows, and the
    materialization's metadata and the log name each bad one (file, line, why). A home of its own:
    the problems table upserts, so rows stored earlier under a skipped id would stay."""
    home, data = tmp_path / "home", tmp_path / "data"
    rows = [GOOD[0], '{"question": "oops", "answer": ', GOOD[1], {"question": "What is 1+1?", "answer": "two"},
            GOOD[2], {"question": "Who?", "answer": 7}, GOOD[3]]
    _write(data / "gsm8k" / "train.jsonl", rows)
    assert not _run(home, data, tiny_models, ["problems"])[0].success  # "error", the default, refuses the file
    result, lines = _run(home, data, tiny_models, ["problems"], {"problems": {"config": {"on_bad_row": "skip"}}})
    assert result.success, lines
    assert [r[0] for r in _rows(home, PROBLEMS_SQL)] == ["gsm8k-0", "gsm8k-2", "gsm8k-4", "gsm8k-6"]
    meta = result.asset_materializations_for_node("problems")[0].metadata
    assert meta["n_skipped_rows"].value == 3 and meta["n_problems"].value == 4
    table = meta["skipped_rows"].value
    for needle in ("gsm8k/train.jsonl, line 2 | malformed JSON", "line 4 | field 'answer' (setting answer_field)",
                   "line 6 | field 'answer' is a number but a string"):
        assert needle in table, table
    from gen_ssd_dagster.instance import get_instance
    from gen_ssd_dagster.store import Home

    logs = get_instance(Home.resolve(home)).all_logs(result.run_id)
    logged = [e.user_message for e in logs if "on_bad_row=skip: 3 bad row(s)" in e.user_message]
    assert logged and "gsm8k/train.jsonl, line 6" in logged[0], logged


@pytest.mark.slow
def test_enormous_question_with_on_bad_row_skip_is_left_out_before_generation(stored, tiny_models):
    home, data, _, _ = stored
    rows = [*GOOD[:2], {"question": "How many? " + "Tom has 3 pens. " * 20000, "answer": "#### 3"}, *GOOD[3:]]
    _write(data / "gsm8k" / "train.jsonl", rows)
    ops = {"gen_ssd_trajectories": {"config": {**SMALL, "sampling": {"max_new_tokens": 10}, "on_bad_row": "skip"}}}
    result, lines = _run(home, data, tiny_models, ["problems", "gen_ssd_trajectories"], ops)
    assert result.success, lines
    meta = result.asset_materializations_for_node("gen_ssd_trajectories")[0].metadata
    assert meta["n_skipped_too_long"].value == 1
    assert "| gsm8k-2 |" in meta["skipped_too_long"].value and "teacher tokens, more than the teacher's context" \
        in meta["skipped_too_long"].value, meta["skipped_too_long"].value
    done = _rows(home, "SELECT problem_id FROM problem_runs WHERE config_hash = (SELECT config_hash FROM"
                       " problem_runs ORDER BY created_at DESC LIMIT 1) ORDER BY 1")
    assert done == [("gsm8k-0",), ("gsm8k-1",), ("gsm8k-3",)]  # max_problems 4: the one left out is not run
    _write(data / "gsm8k" / "train.jsonl", GOOD)
    assert _run(home, data, tiny_models, ["problems"])[0].success  # leave the partition as it was


BAD_SETTINGS = [
    ({"batch_size": 0}, "batch_size"),
    ({"offset": -2}, "offset"),
    ({"max_problems": -1}, "max_problems"),
    ({"chunk_tokens": 0}, "chunk_tokens"),
    ({"num_candidates": 0}, "num_candidates"),
    ({"sampling": {"max_new_tokens": 8, "top_p": 1.5}}, "top_p"),
    ({"sampling": {"max_new_tokens": 8, "temperature": -1.0}}, "temperature"),
]
# Refused by Dagster's config schema at launch, before any step runs (tests/test_run_config.py too).
BAD_AT_LAUNCH = [({"batch_size": "ten"}, "batch_size"), ({"suitability": "sometimes"}, "suitability")]


@pytest.mark.slow
def test_bad_run_config_values_name_the_setting(stored, tiny_models):
    home, data, _, n_traj = stored
    for change, setting in BAD_SETTINGS:
        ops = {"gen_ssd_trajectories": {"config": {**SMALL, **change}}}
        result, _ = _run(home, data, tiny_models, ["gen_ssd_trajectories"], ops)
        msg = _failure(result)
        assert "ConfigError" in msg and setting in msg, (change, msg)
    import dagster as dg

    for change, setting in BAD_AT_LAUNCH:
        with pytest.raises(dg.DagsterInvalidConfigError, match=setting):
            _run(home, data, tiny_models, ["gen_ssd_trajectories"],
                 {"gen_ssd_trajectories": {"config": {**SMALL, **change}}})
    assert _rows(home, "SELECT count(*) FROM trajectories")[0][0] == n_traj


def test_bad_evaluation_and_training_settings():
    from gen_ssd_dagster.core.errors import ConfigError
    from gen_ssd_dagster.core.evaluation.evaluate import evaluate
    from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
    from gen_ssd_dagster.core.types import Problem

    with pytest.raises(ConfigError, match="batch_size"):
        evaluate("/nonexistent", [Problem("d", "d-0", "q", "1")], batch_size=0)
    with pytest.raises(ConfigError, match="epochs"):
        fine_tune("/nonexistent", [("a", "b")], "/tmp/never", TrainConfig(epochs=0))


def _truncate_weights(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])


@pytest.mark.slow
@pytest.mark.parametrize("damage, needles", [
    ("missing", ["does not exist"]),
    ("truncated weights", ["cannot load model", "SafetensorError"]),
    ("corrupt config.json", ["cannot load model", "config.json"]),
])
def test_missing_or_corrupt_teacher_checkpoint(stored, tiny_models, tmp_path, damage, needles):
    import shutil

    home, data, _, n_traj = stored
    ckpt = tmp_path / "teacher_copy"
    if damage != "missing":
        shutil.copytree(tiny_models[0], ckpt)
        if damage == "truncated weights":
            _truncate_weights(ckpt)
        else:
            (ckpt / "config.json").write_text('{"model_type": "llama", ')
    result, _ = _run(home, data, (ckpt, tiny_models[1]), ["teacher", "gen_ssd_trajectories"])
    msg = _failure(result)
    assert str(ckpt) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    assert _rows(home, "SELECT count(*) FROM trajectories")[0][0] == n_traj


def test_unreachable_teacher_server(stored, tiny_models):
    home, data, _, n_traj = stored
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result, _ = _run(home, data, tiny_models, ["teacher", "gen_ssd_trajectories"],
                     teacher_url=f"http://127.0.0.1:{port}/v1")
    msg = _failure(result)
    assert (f"cannot reach teacher server at http://127.0.0.1:{port}/v1/models (models.teacher_url) after 4 tries"
            in msg), msg
    assert _rows(home, "SELECT count(*) FROM trajectories")[0][0] == n_traj


# ---------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root and `mount`); skipped where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_full_disk_while_writing_trajectories_and_checkpoints(small_disk, tiny_models):
    import shutil

    import duckdb

    from gen_ssd_dagster.core.engines.models import ModelSpec, load_model, load_tokenizer
    from gen_ssd_dagster.core.training.sft import save_atomically
    from gen_ssd_dagster.store import Store
    from gen_ssd_dagster.store.trajectories import done_problem_ids, write_batch
    from test_store import _key, _traj

    # DuckDB: the batch that does not fit fails with the file named; the earlier batch is intact
    store = Store(small_disk / "gen_ssd.duckdb")
    write_batch(store, _key(), ["p0"], [_traj("demo", "p0")], {})
    filler = _fill(small_disk, 256 << 10)
    big = _traj("demo", "p1")
    big.text = os.urandom(3 << 20).hex()  # incompressible: the batch's Parquet files cannot fit
    with pytest.raises(duckdb.Error, match=r"gen_ssd\.duckdb.*No space left on device"):
        write_batch(store, _key(), ["p1"], [big], {})
    filler.unlink()
    store = Store(small_disk / "gen_ssd.duckdb")
    assert done_problem_ids(store, _key()) == {"p0"}
    assert store.query("SELECT count(*) FROM trajectories")[0][0] == 1
    write_batch(store, _key(), ["p2"], [_traj("demo", "p2")], {})  # and it takes writes again
    assert done_problem_ids(store, _key()) == {"p0", "p2"}

    # a model save that does not fit: the old checkpoint stays, no temp dir is left beside it
    spec = ModelSpec(str(tiny_models[0]))
    model, tok = load_model(spec), load_tokenizer(spec)
    out = small_disk / "ckpt"
    shutil.copytree(tiny_models[0], out)
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    filler = _fill(small_disk, 64 << 10)
    with pytest.raises(Exception) as exc:  # safetensors raises its own error type
        save_atomically(model, tok, out)
    assert "No space left on device" in str(exc.value)
    assert f"while saving the checkpoint to {out}" in "".join(getattr(exc.value, "__notes__", []))
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before
    assert sorted(p.name for p in small_disk.iterdir()) == sorted(
        ["ckpt", "filler", "gen_ssd.duckdb", "gen_ssd.duckdb.lock", "gen_ssd.duckdb.trajectories",
         *[p.name for p in small_disk.glob("*.wal")]])
    assert not any((small_disk / "gen_ssd.duckdb.trajectories" / "tmp").glob("*/*")), "a failed commit left files"
    filler.unlink()
