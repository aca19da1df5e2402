"""The rows of an exported dataset, streamed out of DuckDB as Arrow batches.

Read only through SQL on the tables `trajectories` and `candidates` (whatever stores them), one
work key at a time, in a fixed order (problem, sample, key) so that the same stored work always
gives the same bytes. The chat columns are built in SQL: `messages` (system prompt if any, the
question as the student is asked it, the teacher's solution text), and TRL's conversational
`prompt` / `completion` split of the same turns.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from ..core.data.sharding import shard_of
from ..core.engines.prompts import PromptSettings
from ..store.db import Store
from ..store.trajectories import WorkKey, data_where
from .steps import STEPS, StepsMerger, candidates_sql

BATCH_ROWS = 8192  # rows per Arrow batch read from DuckDB (and per Parquet row group)
# DuckDB spills what does not fit (the ORDER BYs) to disk past this.
MEMORY_LIMIT = "256MB"

# The raw fields after the chat columns: (SQL expression, column name).
RAW_FIELDS = [
    ("t.problem_id", "problem_id"), ("t.sample_index", "sample_index"), ("t.question", "question"),
    ("t.gold", "gold"), ("t.predicted", "predicted"), ("t.correct", "correct"), ("t.end_reason", "end_reason"),
    ("t.ppl", "ppl"), ("t.student_tokens", "student_tokens"), ("t.teacher_tokens", "teacher_tokens"),
    ("t.n_steps", "n_steps"), ("t.method", "method"), ("t.method_version", "method_version"),
    ("t.config_hash", "config_hash"), ("t.teacher_version", "teacher_version"),
    ("t.student_version", "scorer_version"), ("t.dataset", "dataset"), ("t.trajectory_key", "trajectory_key"),
]

TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
CHAT = pa.list_(TURN)
_TYPES = {"problem_id": pa.string(), "sample_index": pa.int32(), "question": pa.string(), "gold": pa.string(),
          "predicted": pa.string(), "correct": pa.bool_(), "end_reason": pa.string(), "ppl": pa.float64(),
          "student_tokens": pa.int32(), "teacher_tokens": pa.int32(), "n_steps": pa.int32()}
# The kept rows' columns; `all` adds `selected` and `steps` before `shard`.
KEPT_SCHEMA = pa.schema([("messages", CHAT), ("prompt", CHAT), ("completion", CHAT),
                         *((name, _TYPES.get(name, pa.string())) for _, name in RAW_FIELDS), ("shard", pa.int32())])
ALL_SCHEMA = pa.schema([*list(KEPT_SCHEMA)[:-1], ("selected", pa.bool_()), ("steps", STEPS),
                        ("shard", pa.int32())])


def _chat_columns(settings: PromptSettings) -> tuple[str, list]:
    """SQL for messages, prompt and completion, and its parameters (in order of appearance)."""
    user = "t.question || ? " if settings.instruction else "t.question"
    user_params = [f"\n\n{settings.instruction}"] if settings.instruction else []
    system = "{'role': 'system', 'content': ?}, " if settings.system_prompt else ""
    system_params = [settings.system_prompt] if settings.system_prompt else []
    turns = f"{system}{{'role': 'user', 'content': {user}}}"
    assistant = "{'role': 'assistant', 'content': t.text}"
    sql = f"[{turns}, {assistant}] AS messages, [{turns}] AS prompt, [{assistant}] AS completion"
    return sql, [*system_params, *user_params] * 2


def select_sql(key: WorkKey, settings: PromptSettings, everything: bool) -> tuple[str, list]:
    """The query of one configuration's trajectories: the kept rows (`everything` False), or every
    trajectory with `selected` (`everything` True; its steps are added a batch at a time: steps.py)."""
    chat, chat_params = _chat_columns(settings)
    where, params = data_where(key, "t")
    raw = ", ".join(f"{expr} AS {name}" for expr, name in RAW_FIELDS)
    extra, only_kept = (", t.selected AS selected", "") if everything else ("", " AND t.selected")
    return (f"SELECT {chat}, {raw}{extra} FROM trajectories t WHERE {where}{only_kept}"
            " ORDER BY t.problem_id, t.sample_index, t.trajectory_key", [*chat_params, *params])


def with_steps(batch: pa.RecordBatch, merger: StepsMerger) -> pa.RecordBatch:
    """`batch` with the column `steps` (an empty list for a method without steps)."""
    steps = merger.steps_of(batch.column("trajectory_key").to_pylist())
    return pa.RecordBatch.from_arrays([*batch.columns, steps], names=[*batch.schema.names, "steps"])


def _finished(batch: pa.RecordBatch, shards: int, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with the column `shard` (which of `shards` shards its problem falls in: sharding.py),
    cast to `schema` (Arrow's own list naming, whatever DuckDB calls its list items)."""
    shard = pa.array([shard_of(pid, shards) for pid in batch.column("problem_id").to_pylist()], pa.int32())
    return pa.RecordBatch.from_arrays([*batch.columns, shard], names=[*batch.schema.names, "shard"]).cast(schema)


def stream(store: Store, key: WorkKey, settings: PromptSettings, everything: bool, shards: int = 1,
           batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The rows of one configuration, `batch_rows` at a time (the last batch may be shorter).
    It reads one snapshot of the trajectory tables and takes no lock: writers go on meanwhile."""
    sql, params = select_sql(key, settings, everything)
    schema = ALL_SCHEMA if everything else KEPT_SCHEMA
    with store.trajectory_streams(2) as (con, beside):
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        con.execute("SET enable_progress_bar = false")
        # One thread: with two, the two sorted streams' per-thread buffers outgrew the limit and
        # failed at 300,000 trajectories (benchmarks/export_at_scale.py); with one they spill.
        con.execute("SET threads = 1")
        reader = con.sql(sql, params=params).to_arrow_reader(batch_rows)
        if not everything:
            for batch in _recut(reader, batch_rows):
                yield _finished(batch, shards, schema)
            return
        # the candidates, flat, in the same order, on a second connection streaming beside the first
        where, params = data_where(key, "t")
        merger = StepsMerger(beside.sql(candidates_sql(where), params=params).to_arrow_reader(batch_rows))
        for batch in _recut(reader, batch_rows):
            yield _finished(with_steps(batch, merger), shards, schema)


def _recut(reader, rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `rows` rows (the last one shorter): DuckDB's vary, and the row groups must not."""
    pending, size = [], 0
    for batch in reader:
        pending.append(batch)
        size += batch.num_rows
        while size >= rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            rest = table.slice(rows)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
