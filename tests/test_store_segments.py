"""The trajectory tables as Parquet batches (store/segments.py): many writers without a lock, readers
that never wait, a killed writer that leaves no partial batch, exactly once per key and problem."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from pathlib import Path

import duckdb
import pytest

from conftest import run_processes
from gen_ssd_dagster.core.types import Candidate, Step, Trajectory
from gen_ssd_dagster.store import Store, compaction, segments, snapshot
from gen_ssd_dagster.store.trajectories import (WorkKey, candidate_ppl_histogram, candidate_ppls,
                                                done_problem_ids, write_batch)

BATCH = 4
CONSISTENT_AS_ROW = ("SELECT (SELECT count(*) FROM problem_runs) AS runs, (SELECT count(*) FROM trajectories) AS t,"
                     " (SELECT count(*) FROM candidates) AS c,"
                     " (SELECT count(*) FROM candidates ANTI JOIN trajectories USING (trajectory_key)) AS o")
CONSISTENT = ("SELECT (SELECT count(*) FROM problem_runs), (SELECT count(*) FROM trajectories),"
              " (SELECT count(*) FROM candidates),"
              " (SELECT count(*) FROM candidates ANTI JOIN trajectories USING (trajectory_key))")


def _traj(pid: str, text: str = "c0\n#### 4", ppls=(2.0, 5.0)) -> Trajectory:
    cands = [Candidate(text=f"c{i}", teacher_tokens=3, student_tokens=3, nll=1.0, ppl=p, passed=True)
             for i, p in enumerate(ppls)]
    return Trajectory(dataset="demo", problem_id=pid, method="gen_ssd", sample_index=0, question="q?", gold="4",
                      text=text, end_reason="finished", teacher_tokens=6, student_tokens=3, ppl=2.0, predicted="4",
                      correct=True, selected=True, steps=[Step(cands, 0)])


def _key(dataset: str = "demo") -> WorkKey:
    return WorkKey(dataset=dataset, method="gen_ssd", teacher_version="t1", student_version="s1", config_hash="h1")


def _write(path: str, prefix: str, batches: int, text: str = "c0\n#### 4") -> None:
    store = Store(path)
    for b in range(batches):
        pids = [f"{prefix}{b * BATCH + i}" for i in range(BATCH)]
        write_batch(store, _key(), pids, [_traj(p, text) for p in pids], {})


def _read_while(path: str, stop, out) -> None:
    """Query the trajectory tables over and over; record each answer (it must be whole batches)."""
    store = Store(path)
    seen = []
    while not stop.is_set():
        seen.append(store.trajectory_query(CONSISTENT)[0])
    out.put(seen)


def test_two_writers_and_a_reader_while_the_file_lock_is_held(tmp_path):
    """The DuckDB file's lock is held by this process the whole time: trajectory writers and the
    reader go on anyway, so neither ever waits for the lock (nor for each other)."""
    path = str(tmp_path / "db.duckdb")
    store = Store(path)
    store.init()
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_while, args=(path, stop, out))
    with store._lock:  # every other table's writer would wait here
        reader.start()
        assert run_processes(_write, [(path, "a", 15), (path, "b", 15)], 240) == [0, 0]
        stop.set()
        seen = out.get(timeout=120)
        reader.join(60)
    assert reader.exitcode == 0 and len(seen) > 1
    for runs, trajectories, candidates, orphans in seen:  # only whole batches were ever visible
        assert runs % BATCH == 0 and trajectories == runs and candidates == 2 * runs and orphans == 0
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    assert store.trajectory_query(CONSISTENT)[0] == (120, 120, 240, 0)
    assert len(done_problem_ids(store, _key())) == 120


def _die_at_commit(path: str, batches: int) -> None:
    """Write `batches` batches, then be SIGKILLed in the middle of the next commit: its files written
    and fsynced, not yet renamed into place."""
    real = os.rename
    calls = []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) > batches:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    segments.os.rename = rename
    _write(path, "p", batches + 1)


def test_a_writer_killed_mid_commit_leaves_no_partial_batch(tmp_path):
    path = str(tmp_path / "db.duckdb")
    assert run_processes(_die_at_commit, [(path, 3)], 120) == [-signal.SIGKILL]
    store = Store(path)
    # the dead commit's files are there, but only under tmp/, which no reader reads
    leftovers = list((store.segments / "tmp").iterdir())
    assert len(leftovers) == 1 and {p.name for p in leftovers[0].iterdir()} == {
        "problem_runs.parquet", "trajectories.parquet", "candidates.parquet"}
    assert store.trajectory_query(CONSISTENT)[0] == (3 * BATCH, 3 * BATCH, 6 * BATCH, 0)
    assert done_problem_ids(store, _key()) == {f"p{i}" for i in range(3 * BATCH)}
    # a resumed writer commits the lost batch; the leftover changes nothing
    _write(path, "p", 4)
    assert store.trajectory_query(CONSISTENT)[0] == (4 * BATCH, 4 * BATCH, 8 * BATCH, 0)


def test_racing_writers_on_the_same_problems_count_once_and_the_first_commit_wins(tmp_path):
    path = str(tmp_path / "db.duckdb")
    assert run_processes(_write, [(path, "p", 10, "from A"), (path, "p", 10, "from B")], 240) == [0, 0]
    store = Store(path)
    assert len(list((store.segments / "batches").iterdir())) == 20  # both wrote every problem
    assert store.trajectory_query(CONSISTENT)[0] == (40, 40, 80, 0)
    assert store.trajectory_query("SELECT count(*) - count(DISTINCT problem_id) FROM trajectories")[0][0] == 0
    # each problem's rows are the ones of its earliest commit, whoever wrote it
    with store.trajectory_reader() as con:
        won = con.execute("SELECT t.problem_id, t.text FROM _trajectories_won t ORDER BY 1").fetchall()
        first = con.execute("SELECT problem_id, arg_min(text, commit_id) FROM _trajectories_tail GROUP BY 1"
                            " ORDER BY 1").fetchall()
    assert won == first
    assert store.query("SELECT count(*) FROM trajectories")[0][0] == 40  # the locked path agrees


def test_an_old_home_is_read_as_it_is_then_migrated(tmp_path):
    """A file with the trajectory tables inside (an earlier version's): a reader reads them without
    changing anything; the next writer moves them into one batch, and nothing is counted twice."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    from gen_ssd_dagster.store.schema import DDL

    con.execute(DDL)
    con.execute("INSERT INTO problem_runs VALUES ('demo', 'old0', 'gen_ssd', 'v1', 't1', 's1', 'h1', 1, NULL,"
                " current_timestamp)")
    con.execute("INSERT INTO trajectories (trajectory_key, dataset, problem_id, method, method_version, sample_index,"
                " teacher_version, student_version, config_hash, end_reason, selected, text) VALUES"
                " ('k0', 'demo', 'old0', 'gen_ssd', 'v1', 0, 't1', 's1', 'h1', 'finished', true, 'old text')")
    con.execute("INSERT INTO candidates (trajectory_key, step, candidate_index, text, ppl, chosen) VALUES"
                " ('k0', 0, 0, 'c', 3.0, true)")
    con.close()
    store = Store(path)
    before = path.stat().st_mtime_ns
    assert store.trajectory_query(CONSISTENT)[0] == (1, 1, 1, 0)
    assert path.stat().st_mtime_ns == before and not store.segments.exists()
    old_key = WorkKey("demo", "gen_ssd", "t1", "s1", "h1", method_version="v1")
    write_batch(store, old_key, ["new0"], [_traj("new0")], {})
    assert store.trajectory_query(CONSISTENT)[0] == (2, 2, 3, 0)  # not migrated yet: the file's rows and the batch
    store.init()
    assert (store.segments / "batches" / segments.LEGACY_COMMIT).is_dir()
    assert (store.segments / segments.MIGRATED_MARKER).exists()
    assert store.trajectory_query(CONSISTENT)[0] == (2, 2, 3, 0)
    assert store.query(CONSISTENT)[0] == (2, 2, 3, 0)
    assert done_problem_ids(store, old_key) == {"old0", "new0"}
    raw = duckdb.connect(str(path), read_only=True)
    assert raw.execute("SELECT count(*) FROM main.trajectories").fetchone()[0] == 0
    raw.close()
    Store(path).init()  # again: nothing moves twice
    assert store.trajectory_query(CONSISTENT)[0] == (2, 2, 3, 0)


def _names(folder) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_compaction_keeps_every_answer_and_deletes_its_sources_later(tmp_path, monkeypatch):
    path = str(tmp_path / "db.duckdb")
    _write(path, "p", 6)
    _write(path, "p", 2, "a second writer, too late")  # loses p0..p7 to the first
    store = Store(path)
    query = "SELECT problem_id, text FROM trajectories ORDER BY 1"
    before, counts = store.trajectory_query(query), store.trajectory_query(CONSISTENT)
    assert store.compact(min_batches=100) is None  # too few batches to bother
    assert store.compact(min_batches=2)
    assert store.trajectory_query(query) == before and store.trajectory_query(CONSISTENT) == counts
    snap = snapshot.take(store.segments)
    assert snap.tail == [] and len(snap.manifest.segments) == 1
    assert snap.manifest.segments[0]["rows"] == {"problem_runs": 24, "trajectories": 24, "candidates": 48}
    with store.trajectory_reader() as con:  # a compacted home is read without a window or a join
        plan = con.execute("EXPLAIN SELECT count(*) FROM trajectories").fetchall()[0][1]
    assert "WINDOW" not in plan and "JOIN" not in plan
    assert len(_names(store.segments / "batches")) == 8  # consumed, kept a while for readers that listed them
    # the tail against the compacted layer: a problem written again loses; a new one counts
    _write(path, "p", 1, "too late again")
    _write(path, "q", 1)
    assert store.trajectory_query(CONSISTENT)[0] == (24 + BATCH, 24 + BATCH, 48 + 2 * BATCH, 0)
    assert store.trajectory_query(query)[:len(before)] == before
    monkeypatch.setattr(snapshot, "DELETE_AFTER_S", 0.0)
    assert store.compact(min_batches=1)
    assert _names(store.segments / "batches") == set(snapshot.take(store.segments).manifest.consumed)
    assert store.compact(min_batches=1)  # the consumed batches go, then the manifest forgets them
    assert _names(store.segments / "batches") == set() and len(_names(store.segments / "manifest")) == 2  # the newest two
    assert store.trajectory_query(CONSISTENT)[0] == (24 + BATCH, 24 + BATCH, 48 + 2 * BATCH, 0)
    assert store.compact(min_batches=1) is None  # nothing left to do


def test_a_late_commit_with_an_earlier_id_beats_a_compacted_row(tmp_path, monkeypatch):
    """First commit wins across both layers: a writer that committed late (a stalled machine, a clock
    behind) under an earlier commit id takes the problem from the compacted layer, for readers at
    once and in the next compaction."""
    path = str(tmp_path / "db.duckdb")
    early = segments.new_commit_id()
    _write(path, "p", 2)
    store = Store(path)
    assert store.compact(min_batches=1)
    monkeypatch.setattr(segments, "new_commit_id", lambda: early)
    write_batch(store, _key(), ["p1", "x1"], [_traj("p1", "late but first"), _traj("x1", "late but first")], {})
    query = "SELECT problem_id, text FROM trajectories WHERE text = 'late but first' ORDER BY 1"
    assert store.trajectory_query(query) == [("p1", "late but first"), ("x1", "late but first")]
    assert store.trajectory_query(CONSISTENT)[0] == (2 * BATCH + 1, 2 * BATCH + 1, 4 * BATCH + 2, 0)
    assert store.compact(min_batches=1)  # rewrites the segment that held p1
    assert snapshot.take(store.segments).tail == []
    assert store.trajectory_query(query) == [("p1", "late but first"), ("x1", "late but first")]
    assert store.trajectory_query(CONSISTENT)[0] == (2 * BATCH + 1, 2 * BATCH + 1, 4 * BATCH + 2, 0)


def test_segments_merge_level_by_level(tmp_path):
    path = str(tmp_path / "db.duckdb")
    store = Store(path)
    for b in range(compaction.FANOUT + 1):
        _write(path, f"b{b}-", 1)
        assert store.compact(min_batches=1)
    levels = sorted(s["level"] for s in snapshot.take(store.segments).manifest.segments)
    assert levels == [0, 1]  # FANOUT level-0 segments became one level-1 segment
    assert store.trajectory_query(CONSISTENT)[0] == (5 * BATCH, 5 * BATCH, 10 * BATCH, 0)
    assert len(done_problem_ids(store, _key())) == 5 * BATCH


def _die_in_compaction(path: str, at: str) -> None:
    """Compact, and be SIGKILLed at `at`: the segment written (rename) or the manifest written (link)."""
    real = getattr(compaction.os, at)

    def die(src, dst):
        if "compacted" in str(dst) or at == "link":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    setattr(compaction.os, at, die)
    Store(path).compact(min_batches=1)


@pytest.mark.parametrize("at", ["rename", "link"])
def test_a_compaction_killed_midway_leaves_the_old_layer_readable(tmp_path, at):
    path = str(tmp_path / "db.duckdb")
    _write(path, "p", 3)
    store = Store(path)
    assert store.compact(min_batches=1)
    _write(path, "q", 2)
    counts = store.trajectory_query(CONSISTENT)
    assert run_processes(_die_in_compaction, [(path, at)], 120) == [-signal.SIGKILL]
    assert store.trajectory_query(CONSISTENT) == counts and counts[0][0] == 5 * BATCH
    assert len(snapshot.take(store.segments).tail) == 2  # still the tail: nothing counted twice
    assert store.compact(min_batches=1) is None  # its claim is left: skipped, not waited for
    (store.segments / "compacting").rmdir()  # (taken over after CLAIM_STALE_S)
    assert store.compact(min_batches=1)
    assert store.trajectory_query(CONSISTENT) == counts and snapshot.take(store.segments).tail == []


def test_a_writer_starts_a_compaction_when_the_tail_is_long(tmp_path, monkeypatch):
    monkeypatch.setenv("GEN_SSD_COMPACT_AFTER", "3")
    monkeypatch.setenv("PYTHONPATH", os.getcwd())  # the compactor process imports this checkout
    path = str(tmp_path / "db.duckdb")
    store = Store(path)
    _write(path, "p", 2)
    assert not (store.segments / "manifest").exists()
    pids = [f"p{8 + i}" for i in range(BATCH)]
    monkeypatch.setattr(compaction, "start_if_due", _keep(compaction.start_if_due, started := []))
    write_batch(store, _key(), pids, [_traj(p) for p in pids], {})
    assert len(started) == 1 and started[0] is not None
    assert started[0].wait(120) == 0
    snap = snapshot.take(store.segments)
    assert snap.tail == [] and snap.manifest.segments[0]["rows"]["problem_runs"] == 3 * BATCH
    assert store.trajectory_query(CONSISTENT)[0] == (3 * BATCH, 3 * BATCH, 6 * BATCH, 0)


def _keep(fn, out: list):
    def wrapped(*args):
        out.append(fn(*args))
        return out[-1]
    return wrapped


def test_the_ppl_histogram_is_counted_in_sql(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    trajs = [_traj(f"p{i}", ppls=(1.5 + i, 10.0 + 3 * i, 40.0)) for i in range(10)]
    write_batch(store, _key(), [t.problem_id for t in trajs], trajs, {})
    chosen, rejected = candidate_ppls(store, _key())
    assert chosen == [1.5 + i for i in range(10)] and len(rejected) == 20
    h = candidate_ppl_histogram(store, _key(), bins=5)
    assert sum(h["chosen"]) == 10 and sum(h["rejected"]) == 20 and len(h["edges"]) == 6
    assert h["edges"][0] == pytest.approx(1.5) and h["edges"][-1] == pytest.approx(40.0)
    for side, values in (("chosen", chosen), ("rejected", rejected)):
        assert h[side] == [sum(1 for v in values if lo <= v < hi or (i == 4 and v == hi))
                           for i, (lo, hi) in enumerate(zip(h["edges"], h["edges"][1:]))]
    assert candidate_ppls(store, _key(), limit=3)[1] == sorted(candidate_ppls(store, _key(), limit=3)[1])
    assert len(candidate_ppls(store, _key(), limit=3)[1]) == 3


def test_gen_ssd_store_compact(tmp_path, capsys):
    from gen_ssd_dagster.cli import main
    from gen_ssd_dagster.store import Home

    home = Home(tmp_path / "home").make()
    _write(str(home.db_path), "p", 3)
    assert main(["--home", str(home.root), "store", "compact"]) == 0
    out = capsys.readouterr().out
    assert "3 batches folded in; 1 segments (12 trajectories), 0 fresh batches left" in out
    assert Store(home.db_path).trajectory_query(CONSISTENT)[0] == (12, 12, 24, 0)


def _write_shard(path: str, shard: int, batches: int, stall_at: int, release) -> None:
    """Commit `batches` batches of one shard's problems (of 2); with `stall_at`, hang inside that
    commit (its files written, not yet renamed into place) until `release` is set."""
    from gen_ssd_dagster.core.data.sharding import shard_of

    pids = [p for p in (f"s{i}" for i in range(10_000)) if shard_of(p, 2) == shard][:batches * BATCH]
    real, commits = os.rename, []

    def rename(src, dst):
        if Path(dst).parent.name == "batches":
            commits.append(dst)
            if len(commits) == stall_at:
                assert release.wait(300)
        real(src, dst)

    segments.os.rename = rename
    store = Store(path)
    for b in range(batches):
        chunk = pids[b * BATCH:(b + 1) * BATCH]
        write_batch(store, _key(), chunk, [_traj(p) for p in chunk], {})


def test_two_shard_writers_while_the_viewer_and_the_report_read(tmp_path, monkeypatch, capsys):
    """The issue's test: two processes write different shards at once while the viewer and `gen-ssd
    report` read. One writer hangs in the middle of a commit the whole time the readers run: every
    read still finishes (a reader never waits for a commit, let alone more than one), sees whole
    batches only, and the other writer, and the compactor it starts, go on; no writer fails."""
    from gen_ssd_dagster.cli import main
    from gen_ssd_dagster.store import Home
    from gen_ssd_dagster.store.scores import EvaluationScore, write_scores
    from gen_ssd_dagster.viewer.queries import Filters, Reader

    monkeypatch.setenv("GEN_SSD_COMPACT_AFTER", "4")  # compactions run during the test too
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    home = Home(tmp_path / "home").make()
    path = str(home.db_path)
    write_scores(Store(path), [EvaluationScore("gen_ssd", "m1", "demo", 10, 7, 0.7, "g1", "e1")])
    ctx = mp.get_context("spawn")
    release = ctx.Event()
    stalled = ctx.Process(target=_write_shard, args=(path, 0, 6, 2, release))
    other = ctx.Process(target=_write_shard, args=(path, 1, 12, 0, release))
    stalled.start()
    other.start()
    reader, seen = Reader(home), []
    try:
        writing = True
        while writing or len(seen) < 3:
            writing = other.is_alive()  # read once more after the writer is done: its last batch shows
            with reader.session():
                items, total = reader.page(Filters(page=0))
                seen.append((total, reader._rows(CONSISTENT_AS_ROW)[0].values()))
            assert main(["--home", str(home.root), "report"]) == 0
            assert "gen_ssd" in capsys.readouterr().out
        assert other.exitcode == 0 and stalled.is_alive()  # the whole time, one commit hung midway
    finally:
        release.set()
        stalled.join(120)
        other.join(1)
    assert stalled.exitcode == 0
    for total, counts in seen:
        runs, trajectories, candidates, orphans = counts  # whole batches only
        assert total == trajectories == runs and runs % BATCH == 0 and candidates == 2 * runs and orphans == 0
    assert [s[0] for s in seen] == sorted(s[0] for s in seen) and seen[-1][0] == 13 * BATCH  # 12 + the first
    store = Store(path)
    assert store.trajectory_query(CONSISTENT)[0] == (18 * BATCH, 18 * BATCH, 36 * BATCH, 0)
    assert len(done_problem_ids(store, _key())) == 18 * BATCH
