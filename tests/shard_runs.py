"""Materialize partitions in a process of its own, so that GEN_SSD_SHARDS is read as the code
location reads it (when the definitions load). Used by test_shards.py:

    GEN_SSD_SHARDS=4 python tests/shard_runs.py '{"home": ..., "teacher": ..., "student": ...,
        "runs": [{"partition": "demo|0-of-4", "assets": [...]}, ...], "run_config": {...}}'

Prints one JSON line: per run, success, each materialization's metadata numbers, failure lines.
"""

import json
import sys


def main(spec: dict) -> list[dict]:
    from gen_ssd_dagster.defs.resources import DataResource, ModelsResource
    from gen_ssd_dagster.pipeline import run_pipeline
    from gen_ssd_dagster.store import Home

    overrides = {"models": ModelsResource(teacher=spec["teacher"], student=spec["student"]),
                 "data": DataResource(demo_train=12, demo_test=4, data_dir=spec["data_dir"])}
    out = []
    for run in spec["runs"]:
        lines = []
        result = run_pipeline(Home.resolve(spec["home"]), run["partition"], spec["run_config"], overrides,
                              log=lines.append, selection=run["assets"])
        meta = {e.asset_key.to_user_string(): {k: v.value for k, v in
                                               e.step_materialization_data.materialization.metadata.items()
                                               if isinstance(v.value, (int, float, str))}
                for e in result.get_asset_materialization_events()}
        out.append({"partition": run["partition"], "success": result.success, "metadata": meta, "log": lines})
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))))
