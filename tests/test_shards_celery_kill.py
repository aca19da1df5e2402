"""A Celery worker SIGKILLed in the middle of a shard (issue 29): Redis, two real `dagster-celery`
workers, a dataset in 4 shards launched at once as a backfill launches them (one run per shard).
Once every shard's step has started (so no shard waits in a worker's prefetch) and one of them has
committed a batch but not its last, that step's worker is killed with SIGKILL on its process group;
its run, whose Celery task died with it, is killed too (dagster-celery would wait on it forever)
and the shard is materialized again, as re-launching a backfill's failed partitions does. What
must hold:

* the shards ran on both workers;
* the union of the shards is the unsharded run of the same problems (a home of its own, one
  partition), problem for problem: trajectory keys, texts, ends, choices, PPLs to 1e-4;
* nothing is stored twice: one problem_runs row per work key and problem, one trajectory per
  work key, problem and sample;
* the killed worker's committed batches are kept: the re-run reports them reused and generated
  only the rest, and their rows still carry the killed run's id and their first commit time.

Skipped as test_celery.py is (no redis-server or dagster-celery)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from conftest import data_dir
from test_celery import _env, redis_url  # noqa: F401  (redis_url: a fixture)
from test_shards import UPSTREAM, _trajectories, finish_runs, start_runs
from test_shards_celery import WORKERS, materialize, run_upstream, start_workers, stop_workers

SHARDS, PROBLEMS = 4, 24  # shards of 4, 7, 6 and 7 problems: each commits at least two batches
TRAJ = {"max_problems": PROBLEMS, "offset": 0, "batch_size": 2, "num_candidates": 2, "chunk_tokens": 8,
        "suitability": "none", "sampling": {"max_new_tokens": 32, "temperature": 1.0}}
OPS = {"problems": {"config": {"max_problems": PROBLEMS}},
       "cold_start_student": {"config": {"max_problems": 0}},  # skipped: the tiny models are random
       "gen_ssd_trajectories": {"config": TRAJ}}
KEY_COLUMNS = "dataset, method, method_version, teacher_version, student_version, config_hash"


def _partition(shard: int) -> str:
    return f"demo|{shard}-of-{SHARDS}"


class ShardSteps:
    """What the Dagster instance and the store say of each shard's run while the backfill runs."""

    def __init__(self, instance, store, sizes: dict[int, int]):
        self.instance, self.store, self.sizes = instance, store, sizes

    def runs(self) -> dict[int, str]:
        """shard -> run id, for the shard runs created so far."""
        return {int(r.tags["dagster/partition"].split("|")[1].split("-")[0]): r.run_id
                for r in self.instance.get_runs() if "|" in r.tags.get("dagster/partition", "")}

    def node(self, run_id: str) -> str | None:
        """The Celery worker (node name) executing the run's step, once it started there."""
        from dagster import DagsterEventType

        for e in self.instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            if "in celery worker" in (e.dagster_event.message or ""):
                return e.dagster_event.engine_event_data.metadata["Celery worker"].value.split("@")[0]
        return None

    def committed(self) -> Counter:
        """run id -> problems it committed."""
        return Counter(dict(self.store.query("SELECT dagster_run_id, count(*) FROM problem_runs"
                                             " WHERE method = 'gen_ssd' GROUP BY dagster_run_id")))

    def victim(self) -> tuple[int, str, str] | None:
        """(shard, run id, node) of a step to kill: every shard's step has started, and this one has
        committed at least one batch but not its last."""
        runs = self.runs()
        nodes = {shard: self.node(run_id) for shard, run_id in runs.items()}
        if len(runs) < SHARDS or None in nodes.values():
            return None
        done = self.committed()
        # of those caught midway, the one with the most left: a shard one batch from its end can commit
        # that batch between this look and the kill
        midway = [(self.sizes[shard] - done[run_id], shard, run_id) for shard, run_id in runs.items()
                  if 0 < done[run_id] < self.sizes[shard]]
        if not midway:
            return None
        _, shard, run_id = max(midway)
        return shard, run_id, nodes[shard]


def _committed_rows(store, run_id: str) -> list[tuple]:
    return store.query(
        "SELECT t.problem_id, t.sample_index, t.trajectory_key, t.text, t.ppl, t.created_at, t.dagster_run_id"
        " FROM trajectories t WHERE t.method = 'gen_ssd' AND t.problem_id IN"
        " (SELECT problem_id FROM problem_runs WHERE dagster_run_id = ?) ORDER BY 1, 2", [run_id])


@pytest.mark.slow  # Redis, two Celery workers, six Dagster runs and an unsharded reference over tiny models
def test_a_worker_killed_mid_shard_loses_nothing_and_redoes_nothing(tmp_path, tiny_models, redis_url):  # noqa: F811
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    from gen_ssd_dagster.core.data.sharding import shard_of
    from gen_ssd_dagster.store import Home, Store

    teacher, student = tiny_models
    run_config = {"ops": OPS, "resources": {
        "models": {"config": {"teacher": str(teacher), "student": str(student)}},
        "data": {"config": {"demo_train": PROBLEMS, "demo_test": 4, "data_dir": str(data_dir())}}}}
    # The unsharded run of the same problems, in a home of its own, beside the Celery runs.
    reference = start_runs(1, tmp_path / "one", tiny_models, [("demo", UPSTREAM + ["gen_ssd_trajectories"])],
                           run_config={"ops": OPS}, demo_train=PROBLEMS)

    home = tmp_path / "home"
    env = {**_env(home, redis_url), "GEN_SSD_SHARDS": str(SHARDS)}
    workers, logs = start_workers(env, tmp_path, WORKERS)
    runs, killed = {}, None
    try:
        shard_config = run_upstream(env, tmp_path, run_config)
        store = Store(Home.resolve(home).db_path)
        ids = [p for (p,) in store.query("SELECT problem_id FROM problems WHERE dataset = 'demo' AND side = 'train'"
                                         " ORDER BY position LIMIT ?", [PROBLEMS])]
        sizes = Counter(shard_of(p, SHARDS) for p in ids)
        assert len(ids) == PROBLEMS and min(sizes.values()) >= 2 * TRAJ["batch_size"], sizes
        steps = ShardSteps(DagsterInstance.from_config(env["DAGSTER_HOME"]), store, sizes)

        runs = {s: materialize(env, tmp_path, "gen_ssd_trajectories", _partition(s), shard_config)
                for s in range(SHARDS)}
        deadline = time.time() + 400
        while killed is None and time.time() < deadline and any(r.poll() is None for r in runs.values()):
            killed = steps.victim()
            time.sleep(0.1)
        assert killed is not None, "no shard was caught between its first and its last batch"
        shard, run_id, node = killed
        victim = workers[WORKERS.index(node)]
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its children, mid-shard
        victim.wait(10)
        kept = _committed_rows(store, run_id)  # nothing can commit for it any more

        outs = {s: r.communicate(timeout=400)[0] for s, r in runs.items() if s != shard}
        nodes = {s: steps.node(rid) for s, rid in steps.runs().items()}
        # Its task died with the worker (acknowledged when it started): the run would wait forever.
        runs[shard].kill()
        runs[shard].wait(10)
        for s, out in outs.items():
            assert runs[s].returncode == 0, out[-3000:]

        rerun = materialize(env, tmp_path, "gen_ssd_trajectories", _partition(shard), shard_config)
        out = rerun.communicate(timeout=300)[0]
        assert rerun.returncode == 0, out[-3000:]
    except BaseException:
        reference.kill()  # not needed any more
        raise
    finally:
        for r in runs.values():
            if r.poll() is None:
                r.kill()
                r.wait(10)
        stop_workers(workers, logs)

    assert set(nodes.values()) == set(WORKERS), nodes  # the backfill ran shards on both workers
    n_kept = len({row[0] for row in kept})
    # on a quiet machine the kill can land after the shard's last commit: the re-run then reuses all
    assert 0 < n_kept <= sizes[shard]

    # the killed worker's batches are kept: reused by the re-run, which generated only the rest
    [record] = steps.instance.fetch_materializations(AssetRecordsFilter(
        asset_key=AssetKey("gen_ssd_trajectories"), asset_partitions=[_partition(shard)]), limit=1).records
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert (meta["reused_problems"], meta["new_problems"]) == (n_kept, sizes[shard] - n_kept), meta
    assert _committed_rows(store, run_id) == kept  # same rows, same run, same commit time

    # nothing stored twice
    assert store.query(f"SELECT {KEY_COLUMNS}, problem_id FROM problem_runs GROUP BY ALL HAVING count(*) > 1") == []
    assert store.query(f"SELECT {KEY_COLUMNS}, problem_id, sample_index FROM trajectories"
                       " GROUP BY ALL HAVING count(*) > 1") == []
    assert store.query("SELECT count(*), count(DISTINCT problem_id) FROM problem_runs WHERE method = 'gen_ssd'") == [(PROBLEMS, PROBLEMS)]

    # the union of the shards is the unsharded run, problem for problem
    whole = finish_runs(reference)
    assert whole[0]["success"], whole[0]["log"]
    sharded, unsharded = _trajectories(home), _trajectories(tmp_path / "one")
    assert len({r[0] for r in unsharded}) == PROBLEMS
    assert [r[:4] + r[5:7] for r in sharded] == [r[:4] + r[5:7] for r in unsharded]
    assert [r[4] for r in sharded] == pytest.approx([r[4] for r in unsharded], rel=1e-4)
    print(f"killed {node} in shard {shard} after {n_kept} of {sizes[shard]} problems; nodes {nodes}")
