"""What the viewer reads from a home's trajectory tables: read-only, one short connection per request.

Nothing here writes, creates or migrates anything, and the trajectory tables are read without a lock
(`Store.trajectory_reader`), so a viewer never waits for a materialization.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from urllib.parse import urlencode

from ..core.data.sharding import shard_count, shard_of
from ..core.errors import GenSSDError
from ..store import Home, Store

PAGE_SIZE = 50


def shard_label(problem_id: str) -> str:
    """Which trajectories partition generated a problem under $GEN_SSD_SHARDS ("" with one shard):
    the work is stored by problem, so this is the shard of today's count."""
    shards = shard_count()
    return f"shard {shard_of(problem_id, shards)}-of-{shards}" if shards > 1 else ""


SORTS = {"created": "created_at", "ppl": "ppl", "length": "student_tokens", "steps": "n_steps"}
END_REASONS = ("finished", "pruned", "length_cap")
FACETS = ("dataset", "method", "method_version", "teacher_version", "config_hash")
# Enough trajectories for smooth histograms; a sample keeps the plot fast on a large home.
PLOT_SAMPLE = 5_000

LIST_COLUMNS = ("trajectory_key, dataset, problem_id, method, method_version, sample_index, end_reason, correct, ppl,"
                " student_tokens, teacher_tokens, n_steps, selected, teacher_version, config_hash, created_at")


class ViewerError(GenSSDError):
    """Something the person asked for does not exist or cannot be read; shown as a message, not a trace."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Filters:
    """One selection of trajectories, as the list page's query string carries it."""

    dataset: str = ""
    method: str = ""
    method_version: str = ""  # core/method/versions.py: the method's code that made the trajectory
    teacher_version: str = ""
    config_hash: str = ""
    end_reason: str = ""
    correct: str = ""  # "" | "yes" | "no"
    sort: str = "created"
    order: str = "desc"
    page: int = 0

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> "Filters":
        """Parse a query string; a bad value is an error that names the parameter."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ViewerError(f"unknown filter {unknown[0]!r}: use one of {', '.join(sorted(known))}")
        values = {k: v.strip() for k, v in params.items()}
        checks = {"end_reason": ("", *END_REASONS), "correct": ("", "yes", "no"),
                  "sort": tuple(SORTS), "order": ("asc", "desc")}
        for name, allowed in checks.items():
            if name in values and values[name] not in allowed:
                raise ViewerError(f"{name}={values[name]!r} is not one of {', '.join(a or '(any)' for a in allowed)}")
        page = values.pop("page", "0") or "0"
        if not page.isdigit():
            raise ViewerError(f"page={page!r} is not a page number (0, 1, 2, ...)")
        return cls(**values, page=int(page))

    def where(self) -> tuple[str, list]:
        clauses, params = ["TRUE"], []
        for name in (*FACETS, "end_reason"):
            value = getattr(self, name)
            if value:
                clauses.append(f"{name} = ?")
                params.append(value)
        if self.correct:
            clauses.append("correct" if self.correct == "yes" else "NOT coalesce(correct, FALSE)")
        return " AND ".join(clauses), params

    def query_string(self, **changes) -> str:
        """The URL query of this selection with some fields changed (defaults left out)."""
        changed = replace(self, **changes)
        default = Filters()
        return urlencode({f.name: getattr(changed, f.name) for f in fields(self)
                          if getattr(changed, f.name) != getattr(default, f.name)})

    def is_empty(self) -> bool:
        return replace(self, sort="created", order="desc", page=0) == Filters()


class Reader:
    """The trajectories of one home, read-only."""

    def __init__(self, home: Home):
        self.home = home
        self.store = Store(home.db_path, timeout_s=30)
        if not self._stored():
            raise ViewerError(f"{home.db_path} does not exist: home {home.root} has no trajectories yet. "
                              "Materialize a trajectories asset first, or pass the home that has them (--home).", 404)
        self._con = None

    def _stored(self) -> bool:
        """Whether the home holds trajectories: the DuckDB file, or the Parquet batches that may come
        before it (a writer of trajectories alone never creates the file)."""
        return self.home.db_path.is_file() or self.store.segments.is_dir()

    @contextmanager
    def session(self) -> Iterator["Reader"]:
        """One connection for every query of the block (a page's), instead of one per query.
        The app serves one request at a time (its handlers never await), so one slot is enough."""
        try:
            if not self._stored():
                raise FileNotFoundError(f"{self.home.db_path} does not exist")
            with self.store.trajectory_reader() as con:
                self._con = con
                try:
                    yield self
                finally:
                    self._con = None
        except FileNotFoundError as exc:
            raise ViewerError(f"{exc}: was the home moved or deleted?", 404) from exc

    def _rows(self, sql: str, params: list | None = None) -> list[dict]:
        if self._con is None:
            with self.session():
                return self._rows(sql, params)
        cur = self._con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def facets(self) -> dict[str, list[dict]]:
        """Each filterable column's values with their counts, for the filter menus (from the store's
        per-segment counts, `trajectory_counts`, not from every trajectory)."""
        return {name: self._rows(f"SELECT {name} AS value, sum(n)::BIGINT AS n FROM trajectory_counts"
                                 f" GROUP BY {name} ORDER BY {name}") for name in FACETS}

    def count(self, filters: Filters) -> int:
        where, params = filters.where()  # its columns are all in trajectory_counts
        return self._rows(f"SELECT coalesce(sum(n), 0)::BIGINT AS n FROM trajectory_counts WHERE {where}",
                          params)[0]["n"]

    def page(self, filters: Filters) -> tuple[list[dict], int]:
        """One page of the selection, and how many trajectories it holds in all."""
        where, params = filters.where()
        total = self.count(filters)
        direction = "DESC" if filters.order == "desc" else "ASC"
        rows = self._rows(
            f"SELECT {LIST_COLUMNS} FROM trajectories WHERE {where}"
            f" ORDER BY {SORTS[filters.sort]} {direction} NULLS LAST, trajectory_key"
            f" LIMIT {PAGE_SIZE} OFFSET {filters.page * PAGE_SIZE}", params)
        return rows, total

    def latest_keys(self, filters: Filters, limit: int) -> list[str]:
        """The keys of the selection's most recent trajectories."""
        where, params = filters.where()
        return [r["trajectory_key"] for r in self._rows(
            f"SELECT trajectory_key FROM trajectories WHERE {where}"
            f" ORDER BY created_at DESC, trajectory_key LIMIT {int(limit)}", params)]

    def trajectory(self, key: str) -> dict:
        rows = self._rows("SELECT * FROM trajectories WHERE trajectory_key = ?", [key])
        if not rows:
            raise ViewerError(f"no trajectory has the key {key!r} in {self.home.db_path}", 404)
        return {**rows[0], "shard": shard_label(rows[0]["problem_id"])}

    def steps(self, key: str) -> list[list[dict]]:
        """Every step's candidates in order (empty for methods that sample whole solutions)."""
        steps: list[list[dict]] = []
        for c in self._rows("SELECT * FROM candidates WHERE trajectory_key = ? ORDER BY step, candidate_index", [key]):
            while len(steps) <= c["step"]:
                steps.append([])
            steps[c["step"]].append(c)
        return steps

    def same_problem(self, t: dict) -> list[dict]:
        """The other methods' (and samples') trajectories of the same problem from the same teacher."""
        return self._rows(
            f"SELECT {LIST_COLUMNS} FROM trajectories WHERE dataset = ? AND problem_id = ? AND teacher_version = ?"
            " AND trajectory_key <> ? ORDER BY method, config_hash, sample_index",
            [t["dataset"], t["problem_id"], t["teacher_version"], t["trajectory_key"]])

    def distributions(self, filters: Filters) -> dict:
        """Chosen and rejected candidate PPLs, prune steps and lengths of the selection (for the plot);
        of a fixed random sample of PLOT_SAMPLE trajectories when the selection is larger."""
        where, params = filters.where()
        # the filter first, then the sample (DuckDB samples a FROM before its WHERE)
        picked = self._rows(
            f"SELECT * FROM (SELECT trajectory_key, method, end_reason, n_steps, student_tokens FROM trajectories"
            f" WHERE {where}) USING SAMPLE reservoir({PLOT_SAMPLE} ROWS) REPEATABLE (0)", params)
        candidates = self._rows(
            "SELECT c.ppl, c.chosen FROM candidates c JOIN (SELECT unnest(?::VARCHAR[]) AS trajectory_key)"
            " USING (trajectory_key) WHERE c.ppl IS NOT NULL", [[t["trajectory_key"] for t in picked]])
        lengths: dict[str, list[int]] = {}
        for t in picked:
            if t["student_tokens"] is not None:
                lengths.setdefault(t["method"], []).append(t["student_tokens"])
        return {
            "trajectories": len(picked),
            "chosen": [c["ppl"] for c in candidates if c["chosen"]],
            "rejected": [c["ppl"] for c in candidates if not c["chosen"]],
            "prune_steps": [t["n_steps"] for t in picked if t["end_reason"] == "pruned" and t["n_steps"]],
            "lengths": lengths,
        }
