"""`gen-ssd report` and the pipeline's YAML config, without models."""

from __future__ import annotations

import json

from gen_ssd_dagster import cli
from gen_ssd_dagster.store import Store
from gen_ssd_dagster.store.home import Home
from gen_ssd_dagster.store.scores import EvaluationScore, write_scores


def test_report_prints_table_and_json(tmp_path, capsys):
    home = Home.resolve(tmp_path)
    assert cli.main(["--home", str(home.root), "report"]) == 1  # nothing yet: says so
    write_scores(Store(home.db_path), [
        EvaluationScore("base", "v0", "demo", 10, 2, 0.2, "g1", "e", mlflow_run_id="r1"),
        EvaluationScore("gen_ssd", "v1", "demo", 10, 6, 0.6, "g1", "e", mlflow_run_id="r1")])
    capsys.readouterr()
    assert cli.main(["--home", str(home.root), "report"]) == 0
    out = capsys.readouterr().out
    assert "| student | demo (n=10) |" in out
    assert "| gen_ssd | 60.0 |" in out and "| base | 20.0 |" in out  # no stored outputs: no interval
    assert cli.main(["--home", str(home.root), "report", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["scores"]
    assert {(r["student"], r["accuracy"], r["grader_version"]) for r in rows} == {("base", 0.2, "g1"), ("gen_ssd", 0.6, "g1")}


def test_an_empty_gen_ssd_home_means_unset(tmp_path, monkeypatch):
    """One default home for the CLI and the resources: $GEN_SSD_HOME, and an empty one is unset
    (./.gen_ssd_home), never the current directory itself."""
    from gen_ssd_dagster.store.home import default_home

    monkeypatch.chdir(tmp_path)
    expected = (tmp_path / ".gen_ssd_home").resolve()
    for value in ("", None):
        if value is None:
            monkeypatch.delenv("GEN_SSD_HOME", raising=False)
        else:
            monkeypatch.setenv("GEN_SSD_HOME", value)
        assert default_home() == expected
        assert Home.resolve().root == expected
        assert cli.build_parser().parse_args(["report"]).home == str(expected)
    monkeypatch.setenv("GEN_SSD_HOME", str(tmp_path / "elsewhere"))
    assert cli.build_parser().parse_args(["report"]).home == str((tmp_path / "elsewhere").resolve())
    assert cli.default_home is default_home


def test_pipeline_yaml(tmp_path):
    from gen_ssd_dagster.pipeline import load_config

    path = tmp_path / "p.yaml"
    path.write_text("resources:\n  models: {teacher: /m/t, demo: {teacher_layers: 1}}\n  data: {demo_train: 10}\n"
                    "ops:\n  gen_ssd_trajectories: {config: {chunk_tokens: 8}}\n")
    run_config, res = load_config(str(path))
    assert run_config == {"ops": {"gen_ssd_trajectories": {"config": {"chunk_tokens": 8}}}}
    assert res["models"].teacher == "/m/t" and res["models"].demo.teacher_layers == 1
    assert res["data"].demo_train == 10


def test_datasets_yaml_adds_a_partition(tmp_path):
    import subprocess
    import sys

    rows = tmp_path / "mini.jsonl"
    rows.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "#### 4"}\n')
    (tmp_path / "datasets.yaml").write_text(
        f"mini:\n  train: {{local_file: {rows}, question_field: question, answer_format: gsm8k}}\n")
    code = ("from gen_ssd_dagster.defs_support.datasets import DATASETS, dataset_specs\n"
            "from gen_ssd_dagster.core.data.benchmarks import load_problems\n"
            "print(sorted(DATASETS.get_partition_keys()))\n"
            "print(len(load_problems(dataset_specs()['mini']['train'], data_dir='/nonexistent')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "GEN_SSD_DATASETS": str(tmp_path / "datasets.yaml")}).stdout
    keys, n = out.splitlines()
    assert "mini" in keys and "gsm8k" in keys
    assert n == "2"
