"""The teacher-change automation under a real `dagster-daemon`: the sensor ticks on its own, runs
are launched in their own processes, and two teacher changes arrive a minute apart.

The code location (tests/automation_standins.py) is the pipeline with the real `teacher` and
`observed_teacher` and stand-ins for the heavy assets: each stand-in runs the real chain guard,
holds its step open for a few seconds and records the teacher versions it saw. Observations are
made here, as the schedule would make them, against the daemon's instance.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from automation_standins import pipeline, standins

pytestmark = pytest.mark.slow

STEP_S = 6  # every stand-in step lasts this long: a chain stays open for a change to arrive in it
INTERVAL_S = 3  # the sensor's tick


def _scale_middle_tensor(path: Path, factor: float) -> None:
    """The change a merged LoRA makes: one attention weight scaled, the rest of the file as it was."""
    from safetensors.torch import load_file, save_file

    weights = path / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.0.self_attn.v_proj.weight"] = tensors["model.layers.0.self_attn.v_proj.weight"] * factor
    save_file(tensors, weights, metadata={"format": "pt"})


def _wait(predicate, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; daemon log:\n{log.read_text()[-4000:]}")
        time.sleep(1)


def _materializations(instance, key: dg.AssetKey) -> list:
    """Every materialization of `key`, oldest first."""
    return list(reversed(instance.fetch_materializations(key, limit=100).records))


def test_two_changes_a_minute_apart_each_run_the_chain_in_order(tmp_path, tiny_models):
    from gen_ssd_dagster.core.engines.models import model_version
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.defs import automation
    from gen_ssd_dagster.instance import dagster_home, get_instance
    from gen_ssd_dagster.store import Home

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_models[0], teacher)
    home = Home.resolve(tmp_path / "home").make()
    env = {**os.environ, "GEN_SSD_HOME": str(home.root), "GEN_SSD_TEST_TEACHER": str(teacher),
           "GEN_SSD_TEST_STUDENT": str(tiny_models[1]), "GEN_SSD_TEST_STEP_S": str(STEP_S),
           "GEN_SSD_AUTOMATION_INTERVAL_S": str(INTERVAL_S), "DAGSTER_HOME": str(dagster_home(home))}
    instance = get_instance(home)
    defs = standins(pipeline(str(home.root), str(teacher), str(tiny_models[1])), str(teacher))

    # a home a pipeline ran on: every automated asset materialized once, from teacher v0
    every = [automation.TEACHER, automation.COLD_START, *automation.STUDENTS, automation.EVALUATION]
    for keys, partition in ((every, None), ([automation.THRESHOLDS, *automation.TRAJECTORY_ASSETS], "demo")):
        assert dg.materialize(list(defs.assets), instance=instance, selection=keys, partition_key=partition,
                              resources=defs.resources).success
    v0 = automation.last_teacher_version(instance)
    guarded = [automation.THRESHOLDS, *automation.TRAJECTORY_ASSETS]  # they generate from the teacher
    downstream = [*guarded, *automation.STUDENTS, automation.EVALUATION]

    def observe() -> str:
        assert defs.resolve_job_def("observe_teacher").execute_in_process(instance=instance).success
        return automation.last_observed_version(instance)

    def triggered_runs() -> list:
        return instance.get_runs(filters=dg.RunsFilter(tags=automation.TRIGGER_TAGS))

    def idle() -> bool:
        runs = triggered_runs()
        return all(r.is_finished for r in runs)

    workspace = tmp_path / "workspace.yaml"
    here = Path(__file__).parent
    workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {here / 'automation_standins.py'}\n"
                         f"      working_directory: {here}\n      location_name: standins\n")
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
                                  cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ticks = lambda: log.read_text().count("teacher_change_automation")  # noqa: E731
        _wait(lambda: ticks() >= 2, "the automation sensor's first ticks", 120, log)

        # the first observation ever recorded, of an unchanged teacher: nothing runs
        assert observe() == v0
        seen = ticks()
        _wait(lambda: ticks() >= seen + 3, "three more ticks", 60, log)
        assert triggered_runs() == []

        # change 1, then change 2 a minute later, while the first chain runs
        _scale_middle_tensor(teacher, 1.5)
        v1 = observe()
        assert v1 != v0 == model_version(ModelSpec(str(tiny_models[0])))
        _wait(lambda: bool(triggered_runs()), "the first chain's first run", 60, log)
        time.sleep(60)
        _scale_middle_tensor(teacher, 1.5)
        v2 = observe()
        assert v2 not in (v0, v1)

        def settled() -> bool:  # v2's chain is through to the evaluation and nothing is in flight
            return idle() and all(_materializations(instance, key)[-1].asset_materialization.metadata
                                  ["cold_start_teacher"].value == v2 for key in downstream)
        _wait(settled, "the chain of the second change to finish", 420, log)
        seen = ticks()
        _wait(lambda: ticks() >= seen + 3, "three more ticks", 60, log)
        assert idle() and automation.last_teacher_version(instance) == v2
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)

    # the teacher ran once per change, and never again once observed and materialized agreed
    teachers = [r.asset_materialization.metadata["model_version"].value
                for r in _materializations(instance, automation.TEACHER)]
    assert teachers == [v0, v1, v2], teachers
    colds = [r.asset_materialization.metadata["teacher_version"].value
             for r in _materializations(instance, automation.COLD_START)]
    assert colds == [v0, v1, v2], colds
    # work scored by the cold start never started from another teacher than the cold start's, and
    # the students and the evaluation came after the trajectories of the same cold start
    for key in downstream:
        records = _materializations(instance, key)[1:]  # after the initial one
        assert 1 <= len(records) <= 2, key  # at most once per change; a superseded chain may skip it
        assert records[-1].asset_materialization.metadata["cold_start_teacher"].value == v2, key
        for r in records if key in guarded else []:
            md = r.asset_materialization.metadata
            assert md["teacher_on_disk"].value == md["teacher_materialized"].value == md["cold_start_teacher"].value, (
                key, {k: v.value for k, v in md.items()})
    last_trajectories = max(_materializations(instance, key)[-1].storage_id for key in guarded)
    assert all(_materializations(instance, key)[-1].storage_id > last_trajectories
               for key in [*automation.STUDENTS, automation.EVALUATION])
    # a run that was launched for v1 and found v2 on disk refused before writing anything
    for run in triggered_runs():
        if run.status == dg.DagsterRunStatus.FAILURE:
            failures = [e for e in instance.all_logs(run.run_id) if e.is_dagster_event and e.dagster_event.is_step_failure]
            assert failures and all("nothing was written" in e.dagster_event.step_failure_data.error.message
                                    for e in failures), run.run_id
