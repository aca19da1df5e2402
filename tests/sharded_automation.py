"""The teacher-change automation over a sharded dataset, in a process of its own so that
GEN_SSD_SHARDS is read as the code location reads it (when the definitions load). Used by
test_automation.py:

    GEN_SSD_SHARDS=4 GEN_SSD_HOME=... python tests/sharded_automation.py '{"home": ..., "teacher": ..., "student": ...}'

A home the pipeline ran on (stand-ins downstream of the real `teacher`, as test_automation.py's fast
test), every shard of demo materialized; then the teacher's checkpoint changes. Prints one JSON
line: what the ticks requested before and after the change, partitions sorted (null: unpartitioned).
"""

import json
import sys
from pathlib import Path


def main(spec: dict) -> dict:
    from automation_standins import pipeline, standins
    from test_automation import _materialize, _observe, _run_until_idle, _touch_checkpoint

    from gen_ssd_dagster.defs import automation
    from gen_ssd_dagster.defs.partitions import dataset_partitions
    from gen_ssd_dagster.instance import get_instance
    from gen_ssd_dagster.store import Home

    home = Home.resolve(spec["home"]).make()
    instance = get_instance(home)
    defs = standins(pipeline(str(home.root), spec["teacher"], spec["student"]), spec["teacher"])
    _materialize(defs, instance, [automation.TEACHER, automation.COLD_START, *automation.STUDENTS,
                                  automation.EVALUATION])
    _materialize(defs, instance, [automation.THRESHOLDS], "demo")
    for partition in dataset_partitions("demo"):
        _materialize(defs, instance, automation.TRAJECTORY_ASSETS, partition)
    _observe(defs, instance)
    before, cursor = _run_until_idle(defs, instance, None)
    _touch_checkpoint(Path(spec["teacher"]))
    _observe(defs, instance)
    after, _ = _run_until_idle(defs, instance, cursor)

    def plain(ticks):
        return [{k: sorted(v, key=lambda p: p or "") for k, v in tick.items()} for tick in ticks]

    return {"before": plain(before), "after": plain(after)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))))
