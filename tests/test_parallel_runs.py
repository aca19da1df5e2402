"""Partitions materialized at once: Dagster's multiprocess executor inside one run (three trajectory
steps in three processes) while a second run, in another process, works on another partition.
Everything lands in full, and DuckDB's one-writer rule never surfaces as an error.

(tests/test_pipeline.py::test_two_partitions_in_parallel covers two single-step runs at once.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import data_dir
from test_crash_resume import PIPELINE, start_child

METHODS = ["gen_ssd_trajectories", "standard_kd_trajectories", "posthoc_trajectories"]
SMALL = {"max_problems": 4, "offset": 0, "batch_size": 1, "num_candidates": 2, "sampling": {"max_new_tokens": 16}}
OPS = {
    "problems": {"config": {"max_problems": 6}},
    "cold_start_student": {"config": {"max_problems": 0}},
    "gen_ssd_trajectories": {"config": {**SMALL, "chunk_tokens": 8, "suitability": "none"}},
    "standard_kd_trajectories": {"config": SMALL},
    "posthoc_trajectories": {"config": SMALL},
}


def trajectories_job():
    """The three trajectory assets as one job on the multiprocess executor (reconstructable: the
    executor's step processes rebuild it from this module, with the models named in the env)."""
    import dagster as dg

    from gen_ssd_dagster.definitions import pipeline_definitions, resources
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource

    env = os.environ
    defs = dg.Definitions.merge(
        pipeline_definitions(resources(env["GEN_SSD_HOME"],
                                       models=ModelsResource(teacher=env["TEST_TEACHER"], student=env["TEST_STUDENT"]),
                                       data=DataResource(demo_train=12, demo_test=4, data_dir=str(data_dir())))),
        dg.Definitions(jobs=[dg.define_asset_job("trajectories", selection=METHODS)]),
    )
    return defs.resolve_job_def("trajectories")


@pytest.mark.slow
def test_multiprocess_run_and_a_second_run_at_once(tmp_path, tiny_models, monkeypatch):
    if not (data_dir() / "gsm8k" / "train.jsonl").is_file():
        pytest.skip("no GSM8K data (set GEN_SSD_DATA_DIR)")
    import dagster as dg

    from gen_ssd_dagster.instance import get_instance
    from gen_ssd_dagster.store import Home, Store
    from test_crash_resume import UPSTREAM, _materialize

    home = Home.resolve(tmp_path / "home")
    teacher, student = map(str, tiny_models)
    monkeypatch.setenv("GEN_SSD_HOME", str(home.root))
    monkeypatch.setenv("TEST_TEACHER", teacher)
    monkeypatch.setenv("TEST_STUDENT", student)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the step processes share 2 cores
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    _materialize(home.root, tiny_models, UPSTREAM)

    # run 2, another process: the gsm8k partition's problems and Gen-SSD trajectories
    other = start_child(PIPELINE, home.root, teacher, student,
                        json.dumps({"ops": {k: OPS[k] for k in ("problems", "gen_ssd_trajectories")}}),
                        json.dumps(["problems", "gen_ssd_trajectories"]), "gsm8k")
    # run 1, meanwhile: three steps of the demo partition in three processes
    result = dg.execute_job(
        dg.build_reconstructable_job("test_parallel_runs", "trajectories_job",
                                     reconstructor_working_directory=str(Path(__file__).parent)),
        instance=get_instance(home),
        run_config={"ops": {k: OPS[k] for k in METHODS},
                    "execution": {"config": {"multiprocess": {"max_concurrent": 3}}}},
        tags={"dagster/partition": "demo"}, raise_on_error=False)
    out, _ = other.communicate(timeout=600)
    with result:
        failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
        assert result.success, failures
        steps = {e.step_key for e in result.all_events if e.is_step_success}
        assert steps == set(METHODS)
        pids = {e.pid for e in result.all_events if e.event_type_value == "STEP_START"}
        assert len(pids) == 3  # really three processes
    assert other.returncode == 0, out.decode(errors="replace")[-3000:]
    text = out.decode(errors="replace")
    assert "StoreBusyError" not in text and "Conflicting lock" not in text

    store = Store(home.db_path)
    counts = dict(((d, m), n) for d, m, n in store.query(
        "SELECT dataset, method, count(*) FROM trajectories GROUP BY ALL"))
    assert counts == {("demo", "gen_ssd"): 4, ("demo", "standard_kd"): 8, ("demo", "posthoc"): 8,
                      ("gsm8k", "gen_ssd"): 4}
    done = dict(((d, m), n) for d, m, n in store.query(
        "SELECT dataset, method, count(*) FROM problem_runs GROUP BY ALL"))
    assert set(done.values()) == {4} and len(done) == 4
    assert store.query("SELECT count(*) - count(DISTINCT (dataset, problem_id, method, sample_index))"
                       " FROM trajectories")[0][0] == 0
