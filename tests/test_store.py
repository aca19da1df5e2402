"""The DuckDB store: schema, idempotent batch writes, the lineage query, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp

import duckdb
import pytest

from gen_ssd_dagster.core.types import Candidate, Problem, Step, Trajectory
from conftest import run_processes
from gen_ssd_dagster.store import Store
from gen_ssd_dagster.store.scores import EvaluationScore, latest_scores, score_table, write_scores
from gen_ssd_dagster.store.trajectories import (
    WorkKey, done_problem_ids, partition_summary, read_problems, write_batch,
    write_problems)


def _traj(dataset: str, pid: str, sample: int = 0, ppls=(2.0, 5.0), end="finished") -> Trajectory:
    cands = [Candidate(text=f"c{i}", teacher_tokens=3, student_tokens=3, nll=1.0, ppl=p, passed=True)
             for i, p in enumerate(ppls)]
    return Trajectory(dataset=dataset, problem_id=pid, method="gen_ssd", sample_index=sample, question="q?",
                      gold="4", text="c0\n#### 4", end_reason=end, teacher_tokens=6, student_tokens=3, ppl=2.0,
                      predicted="4", correct=True, selected=end == "finished", steps=[Step(cands, 0)])


def _key(dataset="demo", teacher="t1", cfg="h1") -> WorkKey:
    return WorkKey(dataset=dataset, method="gen_ssd", teacher_version=teacher, student_version="s1", config_hash=cfg)


def test_schema_and_problems(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    store.init()
    store.init()  # idempotent
    probs = [Problem("demo", f"p{i}", f"question {i}", str(i)) for i in range(3)]
    assert write_problems(store, probs, "train") == 3
    assert write_problems(store, probs, "train") == 3  # upsert, no duplicates
    assert read_problems(store, "demo", "train") == probs
    assert read_problems(store, "demo", "test") == []
    # one statement for the whole set: a problem given twice keeps its last row, as row-by-row upserts did
    again = [Problem("demo", "p1", "first", "1"), Problem("demo", "p9", "new", "9", solution=None),
             Problem("demo", "p1", "second", "2", solution="worked")]
    assert write_problems(store, again, "train") == 3
    stored = {p.problem_id: p for p in read_problems(store, "demo", "train")}
    assert stored["p1"] == Problem("demo", "p1", "second", "2", solution="worked") and stored["p9"].solution is None
    assert store.query("SELECT position FROM problems WHERE problem_id = 'p1'") == [(2,)]


def test_batch_write_is_keyed_and_idempotent(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    key = _key()
    write_batch(store, key, ["p0", "p1"], [_traj("demo", "p0"), _traj("demo", "p1", end="pruned")], {"k": 1})
    assert done_problem_ids(store, key) == {"p0", "p1"}
    # writing the same problems again replaces, never duplicates
    write_batch(store, key, ["p0"], [_traj("demo", "p0")], {"k": 1})
    s = partition_summary(store, key)
    assert (s["trajectories"], s["finished"], s["pruned"], s["duplicates"]) == (2, 1, 1, 0)
    assert s["mean_chosen_ppl"] == pytest.approx(2.0) and s["mean_rejected_ppl"] == pytest.approx(5.0)
    # a new config hash is new work: nothing of it is done yet
    assert done_problem_ids(store, _key(cfg="h2")) == set()
    # a problem that produced no trajectory is still marked done
    write_batch(store, key, ["p9"], [], {"k": 1})
    assert "p9" in done_problem_ids(store, key)


def test_failed_batch_leaves_nothing(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    write_batch(store, _key(), ["p0"], [_traj("demo", "p0")], {})
    bad = _traj("demo", "p2")
    bad.text = None  # NOT NULL violation on the batch's third trajectory row, after two went in
    # the batch rewrites p0 (its DELETE runs first), adds p1, then fails on p2
    with pytest.raises(duckdb.ConstraintException, match=r'NOT NULL constraint failed: trajectories\."?text"?$'):
        write_batch(store, _key(), ["p0", "p1", "p2"], [_traj("demo", "p0"), _traj("demo", "p1"), bad], {})
    # all of the batch rolled back: p0 as the first batch left it, nothing of p1 or p2
    assert store.query("SELECT problem_id FROM trajectories") == [("p0",)]
    assert store.query("SELECT count(*) FROM candidates")[0][0] == 2
    assert done_problem_ids(store, _key()) == {"p0"}


def test_mean_chosen_ppl_by_dataset_and_teacher_is_one_statement(tmp_path):
    """The lineage query docs/pipeline.md shows: the mean chosen-candidate PPL by dataset and teacher."""
    store = Store(tmp_path / "db.duckdb")
    write_batch(store, _key("demo", "t1"), ["p0"], [_traj("demo", "p0", ppls=(2.0, 9.0))], {})
    write_batch(store, _key("demo", "t2"), ["p0"], [_traj("demo", "p0", ppls=(4.0, 9.0))], {})
    write_batch(store, _key("gsm8k", "t1"), ["p0"], [_traj("gsm8k", "p0", ppls=(3.0, 9.0))], {})
    rows = store.query("SELECT t.dataset, t.teacher_version, avg(c.ppl) FROM candidates c"
                       " JOIN trajectories t USING (trajectory_key) WHERE c.chosen GROUP BY ALL ORDER BY 1, 2")
    assert [(r[0], r[1], r[2]) for r in rows] == [("demo", "t1", 2.0), ("demo", "t2", 4.0), ("gsm8k", "t1", 3.0)]


def test_scores_table(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    write_scores(store, [EvaluationScore("base", "v0", "demo", 10, 1, 0.1, "g1", "e"),
                         EvaluationScore("gen_ssd", "v1", "demo", 10, 5, 0.5, "g1", "e")])
    df = latest_scores(store)
    assert set(df.student) == {"base", "gen_ssd"}
    assert "| gen_ssd | 50.0 |" in score_table(df)


def test_scores_carry_intervals_and_paired_differences_from_their_outputs(tmp_path):
    """Four questions. Standard KD right on q1, q3; Gen-SSD on q1, q2, q3.
    Gen-SSD: mean 0.75, sd (n-1) of [1,1,1,0] = 0.5, SE 0.25, 95% ±0.49 -> [0.26, 1.0 clipped].
    Gen-SSD − KD per question [0,1,0,0]: mean 0.25, sd 0.5, SE 0.25 -> 0.25 ± 0.49: within noise."""
    from gen_ssd_dagster.store.eval_outputs import EvalLedger
    from gen_ssd_dagster.store.scores import (difference_table, noise_sentence, paired_differences,
                                              score_intervals)

    store = Store(tmp_path / "db.duckdb")
    problems = [Problem("demo", f"q{i}", f"question {i}", "4") for i in range(1, 5)]
    for version, right in (("kd", [1, 0, 1, 0]), ("gs", [1, 1, 1, 0])):
        EvalLedger(store, version, "demo", "g1", "e").record(problems, [
            {"problem_id": p.problem_id, "completion": "c", "predicted": "4" if r else "5", "gold": "4",
             "correct": bool(r)} for p, r in zip(problems, right)])
    write_scores(store, [EvaluationScore("standard_kd", "kd", "demo", 4, 2, 0.5, "g1", "e"),
                         EvaluationScore("gen_ssd", "gs", "demo", 4, 3, 0.75, "g1", "e"),
                         EvaluationScore("base", "none", "demo", 4, 0, 0.0, "g1", "e")])  # no outputs stored
    df = latest_scores(store)
    intervals = score_intervals(store, df)
    gs = intervals[("gen_ssd", "demo")]
    assert (gs.estimate, gs.stderr, gs.n_questions) == (0.75, pytest.approx(0.25), 4)
    assert gs.low == pytest.approx(0.75 - 1.959964 * 0.25) and gs.high == 1.0
    assert intervals[("base", "demo")] is None
    assert "| gen_ssd | 75.0 ± 49.0 |" in score_table(df, intervals)
    [(student, bench, diff)] = paired_differences(store, df)
    assert (student, bench, diff.estimate, diff.n_questions) == ("gen_ssd", "demo", 0.25, 4)
    assert diff.stderr == pytest.approx(0.25)
    assert "| gen_ssd | demo | +25.0 ± 49.0 | 4 | within noise |" in difference_table([(student, bench, diff)])
    assert noise_sentence([(student, bench, diff)]).startswith("Every difference from Standard KD above is within noise")


def test_sampled_scores_give_pass_at_1_and_maj_at_k_over_their_samples(tmp_path):
    """Four questions, three answers each (gold 4). Per question, correct: q1 4,4,5 -> 2/3 (majority 4,
    right); q2 5,5,4 -> 1/3 (majority 5, wrong); q3 4,4,4 -> 1 (right); q4 6,5,5 -> 0 (wrong).
    pass@1 = mean(2/3, 1/3, 1, 0) = 0.5; maj@3 = mean(1, 0, 1, 0) = 0.5."""
    import json

    from gen_ssd_dagster.core.evaluation.evaluate import EvalSettings
    from gen_ssd_dagster.store.eval_outputs import EvalLedger
    from gen_ssd_dagster.store.scores import maj_intervals, maj_table, score_intervals

    store = Store(tmp_path / "db.duckdb")
    answers = {"q1": "445", "q2": "554", "q3": "444", "q4": "655"}
    problems = [Problem("demo", q, f"question {q}", "4") for q in answers]
    EvalLedger(store, "gs", "demo", "g1", "e").record(problems, [
        {"problem_id": q, "sample_index": i, "completion": a, "predicted": a, "gold": "4", "correct": a == "4"}
        for q, said in answers.items() for i, a in enumerate(said)])
    settings = EvalSettings(samples=3, temperature=0.6, maj_k=3)
    write_scores(store, [EvaluationScore("gen_ssd", "gs", "demo", 4, 6, 0.5, "g1", "e", samples=3,
                               eval_settings=json.dumps(settings.record()))])
    df = latest_scores(store)
    assert score_intervals(store, df)[("gen_ssd", "demo")].estimate == pytest.approx(0.5)
    (k, maj), = maj_intervals(store, df).values()
    assert (k, maj.estimate, maj.n_questions) == (3, 0.5, 4)
    assert maj.stderr == pytest.approx(0.5773503 / 2)  # sd of [1, 0, 1, 0] over sqrt(4)
    assert "| gen_ssd | demo | maj@3: 50.0 ± 50.0 |" in maj_table(maj_intervals(store, df))
    assert "demo (n=4, 3 samples each)" in score_table(df)


def _writer(path: str, dataset: str, n: int) -> None:
    store = Store(path)
    key = _key(dataset)
    for i in range(n):
        write_batch(store, key, [f"p{i}"], [_traj(dataset, f"p{i}")], {})


def test_two_processes_write_at_once(tmp_path):
    path = str(tmp_path / "db.duckdb")
    Store(path).init()
    assert run_processes(_writer, [(path, ds, 25) for ds in ("demo", "gsm8k")], 120) == [0, 0]
    rows = dict(Store(path).query("SELECT dataset, count(*) FROM trajectories GROUP BY dataset"))
    assert rows == {"demo": 25, "gsm8k": 25}


def _hold_db(path: str, seconds: float, ready) -> None:
    import time

    import duckdb

    con = duckdb.connect(path)  # a foreign writer that ignores our file lock
    ready.set()
    time.sleep(seconds)
    con.close()


def test_foreign_lock_holder_is_waited_out(tmp_path):
    path = str(tmp_path / "db.duckdb")
    Store(path).init()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_db, args=(path, 2.0, ready))
    holder.start()
    assert ready.wait(60)
    write_batch(Store(path), _key(), ["p0"], [_traj("demo", "p0")], {})  # retries until the holder lets go
    holder.join(60)
    assert Store(path).query("SELECT count(*) FROM trajectories")[0][0] == 1


def test_crash_loses_at_most_one_batch_and_resume_redoes_nothing_finished(tmp_path, monkeypatch):
    from gen_ssd_dagster.core.method.config import GenSSDConfig
    from gen_ssd_dagster import generation

    calls = []

    def fake_stream(config, problems, teacher, scorer, batch_size):
        # A stand-in for the model loop (the loop itself is tested in test_selection.py): problems
        # finish one by one; with `crash`, the process dies while the 8th is in flight.
        calls.append([p.problem_id for p in problems])
        for i, p in enumerate(problems):
            if crash and i == 7:
                raise KeyboardInterrupt("killed mid-run")
            yield p, [_traj(p.dataset, p.problem_id)]

    monkeypatch.setattr(generation, "stream_method", fake_stream)
    store, key = Store(tmp_path / "db.duckdb"), _key()
    problems = [Problem("demo", f"p{i}", "q", "4") for i in range(10)]
    crash = True
    with pytest.raises(KeyboardInterrupt):
        generation.run_resumable(store, key, GenSSDConfig(), problems, None, None, batch_size=3)
    # two full commits, then the one finished since is committed on the way out
    assert done_problem_ids(store, key) == {f"p{i}" for i in range(7)}
    calls.clear()
    crash = False
    report = generation.run_resumable(store, key, GenSSDConfig(), problems, None, None, batch_size=3)
    assert calls == [["p7", "p8", "p9"]]
    assert (report.reused, report.generated, report.batches) == (7, 3, 1)
    assert store.query("SELECT count(*) FROM trajectories")[0][0] == 10


def test_a_store_from_before_the_answer_lengths_gains_their_columns(tmp_path):
    """evaluation_outputs without `ended`/`tokens`/`sample_index` (an earlier version's file) opens,
    keeps its rows (as sample 0, NULL lengths), and records new outputs, several samples per question."""
    import duckdb

    from gen_ssd_dagster.store.eval_outputs import EvalLedger

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE evaluation_outputs (model_version VARCHAR NOT NULL, benchmark VARCHAR NOT NULL,"
                " grader_version VARCHAR NOT NULL, eval_config_hash VARCHAR NOT NULL, problem_id VARCHAR NOT NULL,"
                " prompt_sha VARCHAR NOT NULL, completion VARCHAR NOT NULL, predicted VARCHAR, gold VARCHAR NOT NULL,"
                " correct BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,"
                " PRIMARY KEY (model_version, benchmark, grader_version, eval_config_hash, problem_id))")
    con.execute("INSERT INTO evaluation_outputs (model_version, benchmark, grader_version, eval_config_hash,"
                " problem_id, prompt_sha, completion, predicted, gold, correct) VALUES"
                " ('v', 'demo', 'g', 'e', 'old', 'x', 'c', '4', '4', true)")
    con.close()
    store = Store(path)
    ledger = EvalLedger(store, "v", "demo", "g", "e")
    new = Problem("demo", "new", "q?", "4")
    ledger.record([new], [{"problem_id": "new", "sample_index": i, "completion": "4", "predicted": "4", "gold": "4",
                           "correct": True, "ended": True, "tokens": 3 + i} for i in range(2)])
    rows = store.query("SELECT problem_id, sample_index, tokens FROM evaluation_outputs ORDER BY 1, 2")
    assert rows == [("new", 0, 3), ("new", 1, 4), ("old", 0, None)]
    assert [o["ended"] for o in ledger.done([new])["new"]] == [True, True]
    assert store.query("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'evaluation_outputs%'"
                       )[0][0] == 1  # the rebuilt table replaced the old one
