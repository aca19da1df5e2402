"""Stored work knows the method code that made it: the method version is in the work key and in
every trajectory row, a bumped version is new work beside the old, and a store from before versions
were recorded opens with its rows as the first version."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import duckdb
import pytest

from gen_ssd_dagster.core.method.methods import METHODS
from gen_ssd_dagster.core.method.config import GenSSDConfig
from gen_ssd_dagster.core.types import Candidate, Problem, Step, Trajectory
from gen_ssd_dagster import generation
from gen_ssd_dagster.store import Home, Store
from gen_ssd_dagster.store.trajectories import WorkKey, done_problem_ids, write_batch


def _traj(pid: str, text: str = "c0\n#### 4") -> Trajectory:
    cands = [Candidate(text="c0", teacher_tokens=3, student_tokens=3, nll=1.0, ppl=2.0, passed=True)]
    return Trajectory(dataset="demo", problem_id=pid, method="gen_ssd", sample_index=0, question="q?", gold="4",
                      text=text, end_reason="finished", teacher_tokens=3, student_tokens=3, ppl=2.0, predicted="4",
                      correct=True, selected=True, steps=[Step(cands, 0)])


def _key(version: str = "") -> WorkKey:
    return WorkKey("demo", "gen_ssd", "t1", "s1", "h1", method_version=version)


def test_a_key_without_a_method_version_takes_the_current_one():
    assert _key().method_version == METHODS["gen_ssd"].version


def _bump(monkeypatch, method: str, version: str = "2") -> None:
    """The method's code changed what it outputs: its version in the table is bumped."""
    monkeypatch.setitem(METHODS, method, dataclasses.replace(METHODS[method], version=version))


def test_a_bumped_method_version_is_new_work_beside_the_old(tmp_path, monkeypatch):
    store = Store(tmp_path / "db.duckdb")
    problems = [Problem("demo", f"p{i}", "q?", "4") for i in range(3)]
    made = []

    def fake_stream(config, todo, teacher, scorer, batch_size):  # a stand-in for the model loop
        for p in todo:
            made.append(p.problem_id)
            yield p, [_traj(p.problem_id)]

    monkeypatch.setattr(generation, "stream_method", fake_stream)
    v1 = _key("1")
    generation.run_resumable(store, v1, GenSSDConfig(), problems, None, None, batch_size=2)
    assert done_problem_ids(store, v1) == {"p0", "p1", "p2"}

    # a fix in the selection loop bumps the version: the same problems are not done under it
    _bump(monkeypatch, "gen_ssd")
    v2 = _key()
    assert v2.method_version == "2" and done_problem_ids(store, v2) == set()
    made.clear()
    report = generation.run_resumable(store, v2, GenSSDConfig(), problems, None, None, batch_size=2)
    assert (report.reused, report.generated, made) == (0, 3, ["p0", "p1", "p2"])
    assert done_problem_ids(store, v2) == {"p0", "p1", "p2"}

    rows = store.query("SELECT method_version, count(*) FROM trajectories GROUP BY ALL ORDER BY 1")
    assert rows == [("1", 3), ("2", 3)]  # the old rows stay beside the new ones
    assert store.query("SELECT method_version, count(*) FROM problem_runs GROUP BY ALL ORDER BY 1") == [("1", 3), ("2", 3)]
    assert v1.trajectory_key("p0", 0) != v2.trajectory_key("p0", 0)
    # the first version's trajectory key is the one stored work had before versions were recorded
    legacy = hashlib.sha256("\x1f".join(["demo", "p0", "gen_ssd", "0", "t1", "s1", "h1"]).encode()).hexdigest()[:24]
    assert v1.trajectory_key("p0", 0) == legacy


OLD_PROBLEM_RUNS = """CREATE TABLE problem_runs (dataset VARCHAR NOT NULL, problem_id VARCHAR NOT NULL,
    method VARCHAR NOT NULL, teacher_version VARCHAR NOT NULL, student_version VARCHAR NOT NULL,
    config_hash VARCHAR NOT NULL, n_trajectories INTEGER NOT NULL, dagster_run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, problem_id, method, teacher_version, student_version, config_hash))"""
OLD_TRAJECTORIES = """CREATE TABLE trajectories (trajectory_key VARCHAR PRIMARY KEY, dataset VARCHAR NOT NULL,
    problem_id VARCHAR NOT NULL, method VARCHAR NOT NULL, sample_index INTEGER NOT NULL,
    teacher_version VARCHAR NOT NULL, student_version VARCHAR NOT NULL, config_hash VARCHAR NOT NULL, config JSON,
    dagster_run_id VARCHAR, end_reason VARCHAR NOT NULL, teacher_tokens INTEGER, student_tokens INTEGER,
    ppl DOUBLE, predicted VARCHAR, correct BOOLEAN, selected BOOLEAN NOT NULL, n_steps INTEGER, question VARCHAR,
    gold VARCHAR, text VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (dataset, problem_id, method, sample_index, teacher_version, student_version, config_hash))"""


def _old_store(path) -> str:
    """A store file as an earlier version wrote it: no method_version anywhere; one finished problem."""
    tkey = _key("1").trajectory_key("p0", 0)
    con = duckdb.connect(str(path))
    con.execute(OLD_PROBLEM_RUNS)
    con.execute(OLD_TRAJECTORIES)
    con.execute("INSERT INTO problem_runs (dataset, problem_id, method, teacher_version, student_version, config_hash,"
                " n_trajectories) VALUES ('demo', 'p0', 'gen_ssd', 't1', 's1', 'h1', 1)")
    con.execute("INSERT INTO trajectories (trajectory_key, dataset, problem_id, method, sample_index, teacher_version,"
                " student_version, config_hash, end_reason, selected, text) VALUES"
                " (?, 'demo', 'p0', 'gen_ssd', 0, 't1', 's1', 'h1', 'finished', true, 'old text')", [tkey])
    con.close()
    return tkey


def test_a_store_from_before_method_versions_is_migrated(tmp_path, monkeypatch):
    path = tmp_path / "old.duckdb"
    tkey = _old_store(path)
    store = Store(path)
    # the old row is the first version's work: reused under it, with its key unchanged
    assert done_problem_ids(store, _key("1")) == {"p0"}
    assert store.query("SELECT trajectory_key, method_version, text FROM trajectories") == [(tkey, "1", "old text")]
    assert store.query("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '%_before_%'")[0][0] == 0
    # re-writing the same work is ignored, the first commit wins (docs/store.md); a bumped version's
    # work lands beside it
    write_batch(store, _key("1"), ["p0"], [_traj("p0", "redone")], {})
    _bump(monkeypatch, "gen_ssd")
    assert done_problem_ids(store, _key()) == set()
    write_batch(store, _key(), ["p0"], [_traj("p0", "new code")], {})
    assert store.query("SELECT method_version, text FROM trajectories ORDER BY 1") == [("1", "old text"), ("2", "new code")]
    Store(path).init()  # opening it again changes nothing
    assert store.query("SELECT count(*) FROM trajectories")[0][0] == 2


def test_the_viewer_reads_and_filters_by_method_version_even_on_an_old_file(tmp_path, monkeypatch):
    from gen_ssd_dagster.viewer.queries import Filters, Reader

    old = Home(tmp_path / "old")
    old.root.mkdir()
    _old_store(old.db_path)  # never opened by the store: the viewer does not migrate
    reader = Reader(old)
    with reader.session():
        assert reader.facets()["method_version"] == [{"value": "1", "n": 1}]
        assert reader.page(Filters(method_version="1"))[1] == 1
    new = Home(tmp_path / "new")
    store = Store(new.db_path)
    write_batch(store, _key("1"), ["p0"], [_traj("p0")], {})
    _bump(monkeypatch, "gen_ssd")
    write_batch(store, _key(), ["p0", "p1"], [_traj("p0"), _traj("p1")], {})
    with Reader(new).session() as r:
        assert r.page(Filters(method_version="2"))[1] == 2
        assert r.page(Filters(method_version="1"))[1] == 1
        assert {row["method_version"] for row in r.page(Filters())[0]} == {"1", "2"}
    assert Filters.from_query({"method_version": "2"}).method_version == "2"


def test_trajectory_assets_carry_their_method_version_as_code_version(monkeypatch):
    import dagster as dg

    from gen_ssd_dagster.defs.distillation import cold_start_student
    from gen_ssd_dagster.defs.trajectories import trajectories_asset_name, trajectory_asset

    for method in METHODS:
        asset = trajectory_asset(method)
        assert asset.code_versions_by_key[dg.AssetKey(trajectories_asset_name(method))] == METHODS[method].version
    assert cold_start_student.code_versions_by_key[dg.AssetKey("cold_start_student")] == "standard_kd-1"
    _bump(monkeypatch, "posthoc")
    assert trajectory_asset("posthoc").code_versions_by_key[dg.AssetKey("posthoc_trajectories")] == "2"


@pytest.mark.parametrize("method", ["nonsense"])
def test_an_unknown_method_has_no_version(method):
    from gen_ssd_dagster.core.errors import ConfigError

    with pytest.raises(ConfigError, match="nonsense"):
        WorkKey("demo", method, "t", "s", "h")


def test_a_student_learns_only_from_the_current_keys_of_its_partitions(monkeypatch):
    """The keys the trajectories asset output: each asked partition's, from this teacher, cold-start
    student and method version; anything else says which trajectories to materialize."""
    import dagster as dg

    from gen_ssd_dagster.defs.distillation import received_keys

    keys = {"demo": _key("1"), "gsm8k": WorkKey("gsm8k", "gen_ssd", "t1", "s1", "h2", method_version="1")}
    assert received_keys("gen_ssd", keys, ["gsm8k", "demo"], "t1", "s1") == [keys["gsm8k"], keys["demo"]]
    for partitions, teacher, student, why in ((["math500"], "t1", "s1", "none materialized"),
                                              (["demo"], "t2", "s1", "teacher_version t1 (now t2)"),
                                              (["demo"], "t1", "s2", "student_version s1 (now s2)")):
        with pytest.raises(dg.Failure, match=rf"{re.escape(why)}.*gen_ssd_trajectories\[{partitions[0]}\]"):
            received_keys("gen_ssd", keys, partitions, teacher, student)
    _bump(monkeypatch, "gen_ssd")
    with pytest.raises(dg.Failure, match=r"method_version 1 \(now 2\)"):
        received_keys("gen_ssd", keys, ["demo"], "t1", "s1")
