"""The selected trajectories as a Hugging Face dataset (export/, docs/dataset-export.md): real DuckDB,
real `datasets`, real tiny tokenizers and models, real MLflow."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from gen_ssd_dagster import cli
from gen_ssd_dagster.core.data.sharding import shard_of
from gen_ssd_dagster.core.engines.prompts import PromptSettings, Prompter
from gen_ssd_dagster.core.errors import ConfigError, DataError
from gen_ssd_dagster.core.types import Candidate, Step, Trajectory
from gen_ssd_dagster.export import ExportSettings, export_dataset, read_manifest, work_id
from gen_ssd_dagster.export import writer
from gen_ssd_dagster.export.reading import training_pairs
from gen_ssd_dagster.store import Home, Store
from gen_ssd_dagster.store.trajectories import WorkKey, partition_summary, selected_examples, write_batch

KEY = WorkKey("demo", "gen_ssd", "teacher@sha256:aaa", "cold@sha256:bbb", "cfg1")
BASELINE = WorkKey("demo", "standard_kd", "teacher@sha256:aaa", "cold@sha256:bbb", "cfg2")
CONFIG = {"method": "gen_ssd", "chunk_tokens": 8, "num_candidates": 2, "sampling": {"keep": "correct"}}


def _trajectory(pid: str, sample: int, end: str, correct: bool, method: str = "gen_ssd") -> Trajectory:
    lines = [f"{pid} has {sample + 3} apples.\n", f"{sample + 3} + 2 = {sample + 5}\n", f"#### {sample + 5}"]
    steps = [] if method != "gen_ssd" else [
        Step([Candidate(line, 6, 5, 1.0 + i, 2.0 + i, True, i == 2), Candidate("noise\n", 6, 4, 3.0, 20.0, False)],
             None if end == "pruned" and i == 2 else 0) for i, line in enumerate(lines)]
    text = "".join(lines[:2] if end == "pruned" else lines)
    return Trajectory("demo", pid, method, sample, f"What is {pid}?", str(sample + 5), text, end, 36, 15 + sample,
                      2.5 + sample / 10, str(sample + 5) if end == "finished" else None, correct,
                      correct, steps)


def _write(store: Store, key: WorkKey, pids: list[str]) -> None:
    ends = ["finished", "pruned", "length_cap"]
    ts = [_trajectory(p, s, ends[(i + s) % 3], (i + s) % 3 == 0, key.method) for i, p in enumerate(pids) for s in (0, 1)]
    write_batch(store, key, pids, ts, {**CONFIG, "method": key.method})


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    home = Home.resolve(tmp_path / "home").make()
    _write(Store(home.db_path), KEY, [f"p{i}" for i in range(7)])
    _write(Store(home.db_path), BASELINE, ["p0", "p1"])
    return home


def _load(path, config="default"):
    from datasets import load_dataset

    return load_dataset(str(path), config, split="train")


def test_load_dataset_gives_back_every_kept_row_and_every_trajectory(home):
    store = Store(home.db_path)
    result = export_dataset(home, KEY, ExportSettings(prompt=PromptSettings(system_prompt="Be brief."), shards=3))
    assert result.path == home.root / "datasets" / "demo" / f"gen_ssd-{work_id(KEY)}" and result.rewritten
    kept = _load(result.path)
    expected = store.query("SELECT problem_id, sample_index, question, text, gold, predicted, correct, end_reason, ppl,"
                           " student_tokens, teacher_tokens FROM trajectories WHERE method = 'gen_ssd' AND selected"
                           " ORDER BY problem_id, sample_index")
    assert len(expected) == result.counts["kept"] == kept.num_rows > 0
    got = [(r["problem_id"], r["sample_index"], r["question"], r["completion"][0]["content"], r["gold"], r["predicted"],
            r["correct"], r["end_reason"], r["ppl"], r["student_tokens"], r["teacher_tokens"]) for r in kept]
    assert got == [tuple(row) for row in expected]
    first = kept[0]
    assert first["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": first["question"]},
                                 {"role": "assistant", "content": first["completion"][0]["content"]}]
    assert first["prompt"] == first["messages"][:2] and first["completion"] == first["messages"][2:]
    assert (first["method"], first["config_hash"], first["teacher_version"], first["scorer_version"]) == \
        ("gen_ssd", "cfg1", KEY.teacher_version, KEY.student_version)
    assert all(r["shard"] == shard_of(r["problem_id"], 3) for r in kept)
    # the trainer's (question, solution) pairs, streamed back, are exactly what DuckDB selects
    assert list(training_pairs(result.path)) == [(q, t) for _, q, t in selected_examples(store, KEY)]

    everything = _load(result.path, "all")
    assert everything.num_rows == partition_summary(store, KEY)["trajectories"] == 14
    pruned = next(r for r in everything if r["end_reason"] == "pruned")
    assert not pruned["selected"] and [s["chosen"] for s in pruned["steps"]] == [0, 0, None]
    candidates = store.query("SELECT c.step, c.candidate_index, c.text, c.ppl, c.chosen FROM candidates c JOIN trajectories"
                             " t USING (trajectory_key) WHERE t.trajectory_key = ? ORDER BY 1, 2",
                             [pruned["trajectory_key"]])
    assert [(s["step"], i, c["text"], c["ppl"], c["chosen"]) for s in pruned["steps"]
            for i, c in enumerate(s["candidates"])] == [tuple(c) for c in candidates]
    # the baselines have no steps: their `all` rows hold an empty list
    baseline = export_dataset(home, BASELINE)
    assert [r["steps"] for r in _load(baseline.path, "all")] == [[]] * 4


def test_the_card_counts_are_duckdbs(home):
    store = Store(home.db_path)
    result = export_dataset(home, KEY)
    text = (result.path / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["default", "all"]
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": [
        f"data/{p.name}" for p in sorted((result.path / "data").iterdir())]}]
    problems, trajectories, kept, finished, pruned, capped, correct, tokens = store.query(
        "SELECT count(DISTINCT problem_id), count(*), count(*) FILTER (selected), count(*) FILTER (end_reason = 'finished'),"
        " count(*) FILTER (end_reason = 'pruned'), count(*) FILTER (end_reason = 'length_cap'), count(*) FILTER (correct),"
        " sum(teacher_tokens) FROM trajectories WHERE method = 'gen_ssd'")[0]
    row = f"| {problems} | {trajectories} | {kept} | {finished} | {pruned} | {capped} | {correct} |"
    assert row in text.splitlines(), text
    assert f"Teacher tokens spent: {tokens} in all, {tokens / kept:.1f} per kept trajectory." in text
    assert '"chunk_tokens": 8' in text and KEY.teacher_version in text and "keep: correct" in text
    assert f"gen-ssd --home {home.root.name} export {work_id(KEY)}" in text and str(home.root.parent) not in text
    assert result.counts == {"problems": problems, "trajectories": trajectories, "kept": kept, "finished": finished,
                             "pruned": pruned, "length_capped": capped, "correct": correct, "teacher_tokens": tokens}
    assert (result.path / "distributions.png").read_bytes()[:4] == b"\x89PNG"


def _mtimes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_nothing_new_rewrites_nothing_and_new_work_does(home):
    first = export_dataset(home, KEY)
    before = _mtimes(first.path)
    again = export_dataset(home, KEY)
    assert (again.rewritten, again.digest) == (False, first.digest) and _mtimes(first.path) == before
    # the slow path: the store looks changed (fingerprint), the bytes come out the same: the files are
    # kept as they are, and the manifest takes the fingerprint, so the next call is the short path again
    manifest = read_manifest(first.path)
    (first.path / writer.MANIFEST).write_text(json.dumps({**manifest, "fingerprint": "stale"}))
    slow = export_dataset(home, KEY)
    assert (slow.rewritten, slow.digest) == (False, first.digest)
    assert {k: v for k, v in _mtimes(first.path).items() if k != writer.MANIFEST} == \
        {k: v for k, v in before.items() if k != writer.MANIFEST}
    assert read_manifest(first.path)["fingerprint"] == manifest["fingerprint"]
    # a new problem with a kept trajectory: a new digest, one more row
    _write(Store(home.db_path), KEY, ["p9"])
    grown = export_dataset(home, KEY)
    assert grown.rewritten and grown.digest != first.digest and grown.counts["kept"] == first.counts["kept"] + 1
    assert _load(grown.path).num_rows == grown.counts["kept"]
    # the bytes depend on the stored work only: another folder from the same store, the same digest
    assert export_dataset(home, KEY, out=home.root / "copy").digest == grown.digest


def test_a_failed_export_leaves_the_previous_folder_whole(home, monkeypatch):
    first = export_dataset(home, KEY)
    before = _mtimes(first.path)
    _write(Store(home.db_path), KEY, ["p9"])

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "distributions_png", broken)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(home, KEY)
    assert _mtimes(first.path) == before and read_manifest(first.path)["digest"] == first.digest
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name]  # no temp folder left
    assert _load(first.path).num_rows == first.counts["kept"]


def test_bad_input_is_named(home, tmp_path):
    with pytest.raises(DataError, match="no trajectories stored under gen_ssd / gsm8k"):
        export_dataset(home, WorkKey("gsm8k", "gen_ssd", "t", "s", "c"))
    with pytest.raises(ConfigError, match="rows_per_file"):
        export_dataset(home, KEY, ExportSettings(rows_per_file=0))
    with pytest.raises(ConfigError, match="shards"):
        export_dataset(home, KEY, ExportSettings(shards=0))


def test_several_parquet_files_read_as_one_split(home):
    result = export_dataset(home, KEY, ExportSettings(rows_per_file=3))
    names = sorted(p.name for p in (result.path / "data").iterdir())
    assert [n[:-len("-123456789abc.parquet")] for n in names] == [f"train-0000{i}-of-00002" for i in range(2)]
    assert [r["problem_id"] for r in _load(result.path)] == [r[0] for r in selected_examples(Store(home.db_path), KEY)]
    assert len(list((result.path / "all").iterdir())) == 5  # 14 rows, 3 a file


def test_cli_export_lists_the_keys_names_an_unknown_one_and_writes(home, capsys):
    assert cli.main(["--home", str(home.root), "export"]) == 0
    listing = capsys.readouterr().out
    assert work_id(KEY) in listing and work_id(BASELINE) in listing
    assert cli.main(["--home", str(home.root), "export", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope' is not a stored work key" in err and work_id(KEY) in err
    assert cli.main(["--home", str(home.root), "export", work_id(KEY)[:6], "--instruction", "Show your work."]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote ") and read_manifest(home.root / "datasets" / "demo" / f"gen_ssd-{work_id(KEY)}")["digest"] in out
    assert _load(home.root / "datasets" / "demo" / f"gen_ssd-{work_id(KEY)}")[0]["messages"][0]["content"].endswith(
        "\n\nShow your work.")
    assert cli.main(["--home", str(home.root), "export", work_id(KEY)[:6], "--instruction", "Show your work."]) == 0
    assert capsys.readouterr().out.startswith("unchanged: ")


def test_push_to_hub_is_tested_up_to_the_call_and_never_shows_the_token(home, monkeypatch, caplog, capsys):
    from gen_ssd_dagster.export.hub import HubPushError, HubTarget, push

    result = export_dataset(home, KEY)
    with pytest.raises(ConfigError, match="push_to_hub.repo_id"):
        push(result.path, HubTarget("no-slash"), result.digest)
    monkeypatch.delenv("GEN_SSD_TEST_HUB_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="GEN_SSD_TEST_HUB_TOKEN"):
        push(result.path, HubTarget("me/gen-ssd-demo", "GEN_SSD_TEST_HUB_TOKEN"), result.digest)
    secret = "hf_thisIsNotARealTokenButASecret123"
    monkeypatch.setenv("GEN_SSD_TEST_HUB_TOKEN", secret)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real client, stopped at its first request
    caplog.set_level("DEBUG")
    with pytest.raises(HubPushError, match="me/gen-ssd-demo.*offline") as info:
        push(result.path, HubTarget("me/gen-ssd-demo", "GEN_SSD_TEST_HUB_TOKEN"), result.digest)
    assert secret not in str(info.value) and secret not in caplog.text
    assert cli.main(["--home", str(home.root), "export", work_id(KEY), "--push-to-hub", "me/gen-ssd-demo",
                     "--token-env", "GEN_SSD_TEST_HUB_TOKEN"]) == 2
    out, err = capsys.readouterr()
    assert "offline" in err and secret not in out + err + caplog.text


def test_an_mlflow_run_logs_the_dataset_and_lineage_lists_it(home, capsys):
    from mlflow import MlflowClient

    from gen_ssd_dagster.store.lineage import model_lineage
    from gen_ssd_dagster.tracking.mlflow_client import MLflowSession

    result = export_dataset(home, KEY)
    session = MLflowSession(home.mlflow_uri, "gen-ssd", home.mlflow_artifacts, home.root / "mlflow.lock")
    tags = {"method": "gen_ssd", "partitions": "demo", "config_hash": "demo:cfg1", "teacher_version": KEY.teacher_version,
            "student_version": KEY.student_version, "model_version": "student-v1"}
    with session.run("student_gen_ssd", tags=tags) as run:
        run.log_dataset(result.path, result.digest, "gen_ssd/demo")
        (home.root / "ckpt").mkdir()
        (home.root / "ckpt" / "config.json").write_text("{}")
        run.log_artifacts(home.root / "ckpt", "model")
        run.register("gen-ssd-student-gen-ssd", "model", tags=tags)
    [logged] = MlflowClient(home.mlflow_uri).get_run(run.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == result.digest[:32] and logged.dataset.name == "gen_ssd/demo"
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "training"
    info = model_lineage(home, "gen_ssd")
    assert info["training_datasets"] == [{"name": "gen_ssd/demo", "path": str(result.path), "digest": result.digest,
                                          "context": "training"}]
    assert cli.main(["--home", str(home.root), "lineage", "--model", "gen_ssd"]) == 0
    assert f"trained on         {result.path}  (digest {result.digest})" in capsys.readouterr().out


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def chat_student(tiny_models, tmp_path_factory) -> Path:
    """The tiny student with a ChatML template and its two special tokens (embeddings grown to match)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("chat_student")
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[1])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    model = AutoModelForCausalLM.from_pretrained(tiny_models[1])
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


SETTINGS = PromptSettings(system_prompt="You are a careful tutor.", instruction="End with the line #### N.")


def test_messages_through_the_students_chat_template_are_the_trainers_tokens(home, chat_student):
    """What the project's trainer feeds the student (sft.encode_examples) is what the student's chat
    template makes of `messages`: the prompt turns with the generation prompt, then the solution
    and the end-of-turn token (the template's newline after it is all that TRL adds)."""
    from transformers import AutoTokenizer

    from gen_ssd_dagster.core.training.sft import IGNORE, encode_examples

    tokenizer = AutoTokenizer.from_pretrained(chat_student)
    prompter = Prompter(tokenizer, SETTINGS, "student")
    assert prompter.uses_chat and tokenizer.convert_ids_to_tokens(prompter.end_id) == "<|im_end|>"
    result = export_dataset(home, KEY, ExportSettings(prompt=SETTINGS))
    rows = list(_load(result.path))
    trainer = encode_examples(prompter, list(training_pairs(result.path)), max_length=4096)
    assert len(trainer) == len(rows) > 0
    for row, (ids, labels) in zip(rows, trainer):
        prompt = _ids(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True))
        solution = tokenizer(row["completion"][0]["content"], add_special_tokens=False)["input_ids"]
        assert ids == prompt + solution + [prompter.end_id]
        assert labels == [IGNORE] * len(prompt) + solution + [prompter.end_id]
        whole = _ids(tokenizer.apply_chat_template(row["messages"], tokenize=True))
        assert whole[:len(ids)] == ids and tokenizer.decode(whole[len(ids):]) == "\n"


def test_trl_sft_trainer_trains_on_the_export_as_it_is(home, chat_student, tmp_path):
    """docs/dataset-export.md's lines, with a 2-step budget. Skipped only where `trl` does not import
    (it is not a dependency of the project: `pip install trl`)."""
    pytest.importorskip("trl", exc_type=ImportError)
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    path = export_dataset(home, KEY, ExportSettings(prompt=SETTINGS)).path
    dataset = load_dataset(str(path), split="train")
    trainer = SFTTrainer(model=str(chat_student), train_dataset=dataset,
                         args=SFTConfig(output_dir=str(tmp_path / "student-sft"), max_steps=2,
                                        per_device_train_batch_size=2, report_to="none", save_strategy="no",
                                        use_cpu=True))
    try:
        result = trainer.train()
    finally:  # TRL's Accelerator state is process-wide: later tests build their own
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    assert result.global_step == 2 and result.training_loss > 0
    # TRL tokenized the rows as our trainer does, and put the loss on the same tokens (plus the
    # template's newline after the end of turn, which TRL keeps and our trainer cuts)
    from transformers import AutoTokenizer

    from gen_ssd_dagster.core.training.sft import encode_examples

    prompter = Prompter(AutoTokenizer.from_pretrained(chat_student), SETTINGS, "student")
    ours = encode_examples(prompter, list(training_pairs(path)), max_length=4096)
    for row, (ids, labels) in zip(trainer.train_dataset, ours, strict=True):
        assert list(row["input_ids"])[:-1] == ids and list(row["labels"])[:-1] == labels


def test_an_export_past_duckdbs_memory_says_to_compact_and_writes_nothing(home, monkeypatch):
    """Out of DuckDB's memory (here a limit far below a few rows; measured at scale on 900,000
    trajectories in one uncompacted batch), the export says what to run and leaves no folder."""
    from gen_ssd_dagster.export import rows

    monkeypatch.setattr(rows, "MEMORY_LIMIT", "1KB")
    with pytest.raises(DataError, match=r"store compact") as err:
        export_dataset(home, KEY)
    assert str(home.root) in str(err.value)
    folder = home.root / "datasets" / "demo"
    assert not folder.exists() or not any(folder.iterdir())
