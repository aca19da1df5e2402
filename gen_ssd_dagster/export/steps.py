"""The `steps` column of the `all` configuration: each trajectory's steps, each step's candidates.

The candidates stream flat out of DuckDB, sorted in the trajectories' own order, and are nested
here with Arrow offsets, a batch of trajectories at a time. (Nesting them in SQL was the first
try: DuckDB cannot spill nested lists, so grouping a large key's candidates ran out of its memory
limit, and per-batch ordered list aggregates took ~1.3 s per 8k trajectories.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CANDIDATE_FIELDS = ["text", "ppl", "nll", "teacher_tokens", "student_tokens", "passed", "chosen", "ends_solution"]
CANDIDATE = pa.struct([("text", pa.string()), ("ppl", pa.float64()), ("nll", pa.float64()),
                       ("teacher_tokens", pa.int32()), ("student_tokens", pa.int32()), ("passed", pa.bool_()),
                       ("chosen", pa.bool_()), ("ends_solution", pa.bool_())])
STEP = pa.struct([("step", pa.int32()), ("chosen", pa.int32()), ("candidates", pa.list_(CANDIDATE))])
STEPS = pa.list_(STEP)


def candidates_sql(where: str) -> str:
    """Every candidate of the trajectories `where` selects (alias t), in their export order."""
    return ("SELECT c.trajectory_key, c.step, c.candidate_index, "
            + ", ".join(f"c.{f}" for f in CANDIDATE_FIELDS)
            + f" FROM candidates c JOIN trajectories t USING (trajectory_key) WHERE {where}"
            " ORDER BY t.problem_id, t.sample_index, t.trajectory_key, c.step, c.candidate_index")


class StepsMerger:
    """Walks the flat candidate stream beside the trajectory stream (both in the same order)."""

    def __init__(self, reader):
        self.reader = reader
        self.buffer = None  # candidate rows read but not yet handed out
        self.done = False

    def _fill_past(self, keys: set) -> None:
        """Read until the buffer holds a row of a later trajectory than `keys` (or the stream ends)."""
        while not self.done and (self.buffer is None or not self.buffer.num_rows
                                 or self.buffer.column("trajectory_key")[-1].as_py() in keys):
            try:
                chunk = pa.Table.from_batches([self.reader.read_next_batch()])
            except StopIteration:
                self.done = True
                return
            self.buffer = chunk if self.buffer is None else pa.concat_tables([self.buffer, chunk])

    def steps_of(self, keys: list[str]) -> pa.Array:
        """The `steps` of the trajectories `keys` (the next ones in the stream's order)."""
        wanted = set(keys)
        self._fill_past(wanted)
        if self.buffer is None:
            return _nest(None, keys)
        mine = pc.is_in(self.buffer.column("trajectory_key"), value_set=pa.array(keys, pa.string()))
        n = pc.sum(mine).as_py() or 0
        rows, self.buffer = self.buffer.slice(0, n).combine_chunks(), self.buffer.slice(n)
        return _nest(rows, keys)


def _nest(rows: pa.Table | None, keys: list[str]) -> pa.Array:
    """Candidate rows (sorted by trajectory, step, candidate) as one list of steps per key in `keys`."""
    if rows is None or not rows.num_rows:
        return pa.array([[] for _ in keys], STEPS)
    key = np.asarray(rows.column("trajectory_key").to_pylist(), dtype=object)
    step = rows.column("step").to_numpy()
    new_traj = np.r_[True, key[1:] != key[:-1]]
    step_start = np.flatnonzero(new_traj | np.r_[True, step[1:] != step[:-1]])
    step_of_row = np.cumsum(np.isin(np.arange(len(step)), step_start)) - 1
    chosen = np.full(len(step_start), -1)
    picked = np.flatnonzero(rows.column("chosen").fill_null(False).to_numpy(zero_copy_only=False))
    chosen[step_of_row[picked]] = rows.column("candidate_index").to_numpy()[picked]
    candidates = pa.StructArray.from_arrays([rows.column(f).combine_chunks() for f in CANDIDATE_FIELDS],
                                            fields=list(CANDIDATE))
    steps = pa.StructArray.from_arrays(
        [pa.array(step[step_start], pa.int32()), pa.array(chosen, pa.int32(), mask=chosen < 0),
         pa.ListArray.from_arrays(pa.array(np.r_[step_start, len(step)], pa.int32()), candidates)],
        fields=list(STEP))
    # steps per trajectory, then one (possibly empty) list per key, in the keys' order
    traj_of_step = key[step_start]
    first = np.flatnonzero(np.r_[True, traj_of_step[1:] != traj_of_step[:-1]])
    count = dict(zip(traj_of_step[first], np.diff(np.r_[first, len(step_start)])))
    offsets = np.r_[0, np.cumsum([count.get(k, 0) for k in keys])]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), steps)
