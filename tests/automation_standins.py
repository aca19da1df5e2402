"""The pipeline's definitions with every automated asset but `teacher` replaced by a stand-in of
the same spec (key, partitions, dependencies, condition), for tests of the teacher-change
automation: what runs when, not what the assets compute.

A stand-in runs the real chain guard (`check_same_teacher`) as the real cold start and
trajectories do, optionally sleeps (so a chain stays open long enough for a change to arrive), and
records in its metadata which teacher versions it saw: the teacher on disk, the teacher
materialized, and the teacher the cold start on record learnt from.

Also the code location of the daemon test (tests/test_teacher_change_daemon.py): `defs` below,
built from $GEN_SSD_HOME, $GEN_SSD_TEST_TEACHER, $GEN_SSD_TEST_STUDENT and $GEN_SSD_TEST_STEP_S.
"""

from __future__ import annotations

import os
import time

import dagster as dg

DEMO = {"demo_train": 12, "demo_test": 3, "demo_seed": 0}


def standins(defs: dg.Definitions, teacher_path: str | None = None, step_s: float = 0.0) -> dg.Definitions:
    from gen_ssd_dagster.core.engines.models import model_version
    from gen_ssd_dagster.core.engines.models import ModelSpec
    from gen_ssd_dagster.defs.automation import CONDITIONS, COLD_START, TEACHER, THRESHOLDS, TRAJECTORY_ASSETS
    from gen_ssd_dagster.teacher_chain import (check_same_teacher, cold_start_teacher_version,
                                                            last_teacher_version)

    scored = {THRESHOLDS, *TRAJECTORY_ASSETS}

    def standin(spec):
        @dg.multi_asset(specs=[spec], name=f"standin_{spec.key.to_python_identifier()}")
        def _asset(context):
            seen = {}
            if teacher_path:
                on_disk = model_version(ModelSpec(teacher_path))
                if spec.key == COLD_START or spec.key in scored:  # the assets that generate check it
                    check_same_teacher(context, on_disk, cold_start_too=spec.key != COLD_START)
                seen = {"teacher_on_disk": on_disk, "teacher_materialized": last_teacher_version(context.instance) or "",
                        "cold_start_teacher": cold_start_teacher_version(context.instance) or ""}
                if spec.key == COLD_START:  # as the real cold start records what it learnt from
                    seen["teacher_version"] = on_disk
            time.sleep(step_s)
            return dg.MaterializeResult(asset_key=spec.key, metadata=seen)
        return _asset

    assets = [a for a in defs.assets if not isinstance(a, dg.AssetsDefinition) or a.key == TEACHER]
    specs = [s for a in defs.assets if isinstance(a, dg.AssetsDefinition) for s in a.specs]
    assets += [standin(s) for s in specs if s.key in CONDITIONS and s.key != TEACHER]
    return dg.Definitions(assets=assets, jobs=defs.jobs, resources=defs.resources, schedules=defs.schedules,
                          sensors=defs.sensors)


def pipeline(home: str, teacher: str, student: str) -> dg.Definitions:
    from gen_ssd_dagster.definitions import pipeline_definitions, resources
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource

    overrides = {"models": ModelsResource(teacher=teacher, student=student), "data": DataResource(**DEMO)}
    return pipeline_definitions(resources(home, **overrides))


if os.environ.get("GEN_SSD_TEST_TEACHER"):  # loaded as the daemon test's code location
    defs = standins(pipeline(os.environ["GEN_SSD_HOME"], os.environ["GEN_SSD_TEST_TEACHER"],
                             os.environ["GEN_SSD_TEST_STUDENT"]),
                    os.environ["GEN_SSD_TEST_TEACHER"], float(os.environ.get("GEN_SSD_TEST_STEP_S", "0")))
