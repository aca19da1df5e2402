"""The DuckDB schema. Stored work is keyed by everything that determines it.

A trajectory's key is (dataset, problem_id, method, method_version, sample_index, teacher_version,
student_version, config_hash): change the method's code (a bumped method version), the teacher, the
scorer or one knob and the key changes, so the new work is visible next to the old and unchanged
work is reused. `problem_runs` marks a
problem done under a key, written in the same transaction as its trajectories, so a problem that
produced no trajectory is not redone either.
"""

from functools import lru_cache

from ..core.method.versions import FIRST_VERSION

SCHEMA_VERSION = 1

EVALUATION_OUTPUTS = """
-- One graded answer per (model, benchmark, problem, sample, grader, settings), written a batch per
-- transaction while an evaluation runs: a restarted evaluation only does the missing batches.
CREATE TABLE IF NOT EXISTS evaluation_outputs (
    model_version VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,
    grader_version VARCHAR NOT NULL,
    eval_config_hash VARCHAR NOT NULL,
    problem_id VARCHAR NOT NULL,
    sample_index INTEGER NOT NULL,     -- 0 .. samples-1 (EvalSettings.samples answers per question)
    prompt_sha VARCHAR NOT NULL,       -- the question and gold it answered: a changed problem is redone
    completion VARCHAR NOT NULL,
    predicted VARCHAR,
    gold VARCHAR NOT NULL,
    correct BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    ended BOOLEAN,                     -- the answer closed by itself (not cut at max_new_tokens)
    tokens INTEGER,                    -- generated tokens
    PRIMARY KEY (model_version, benchmark, grader_version, eval_config_hash, problem_id, sample_index)
);
"""

PROBLEM_RUNS = """
CREATE TABLE IF NOT EXISTS problem_runs (
    dataset VARCHAR NOT NULL,
    problem_id VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    method_version VARCHAR NOT NULL,   -- core/method/versions.py: the method's code that did the work
    teacher_version VARCHAR NOT NULL,
    student_version VARCHAR NOT NULL,
    config_hash VARCHAR NOT NULL,
    n_trajectories INTEGER NOT NULL,
    dagster_run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, problem_id, method, method_version, teacher_version, student_version, config_hash)
);
"""

TRAJECTORIES = """
CREATE TABLE IF NOT EXISTS trajectories (
    trajectory_key VARCHAR PRIMARY KEY,
    dataset VARCHAR NOT NULL,          -- the Dagster partition
    problem_id VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    method_version VARCHAR NOT NULL,   -- core/method/versions.py: the method's code that made it
    sample_index INTEGER NOT NULL,
    teacher_version VARCHAR NOT NULL,
    student_version VARCHAR NOT NULL,  -- the scorer's version ('' when the method scores nothing)
    config_hash VARCHAR NOT NULL,
    config JSON,
    dagster_run_id VARCHAR,
    end_reason VARCHAR NOT NULL,       -- finished | pruned | length_cap
    teacher_tokens INTEGER,
    student_tokens INTEGER,
    ppl DOUBLE,
    predicted VARCHAR,
    correct BOOLEAN,
    selected BOOLEAN NOT NULL,
    n_steps INTEGER,
    question VARCHAR,
    gold VARCHAR,
    text VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (dataset, problem_id, method, method_version, sample_index, teacher_version, student_version, config_hash)
);
"""

CANDIDATES = """
CREATE TABLE IF NOT EXISTS candidates (
    trajectory_key VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    candidate_index INTEGER NOT NULL,
    text VARCHAR NOT NULL,
    ppl DOUBLE,
    nll DOUBLE,
    teacher_tokens INTEGER,
    student_tokens INTEGER,
    chars INTEGER,
    passed BOOLEAN,
    chosen BOOLEAN NOT NULL,
    ends_solution BOOLEAN,
    PRIMARY KEY (trajectory_key, step, candidate_index)
);
"""

DDL = f"""
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER);

CREATE TABLE IF NOT EXISTS problems (
    dataset VARCHAR NOT NULL,
    side VARCHAR NOT NULL,            -- train | test
    problem_id VARCHAR NOT NULL,
    position INTEGER NOT NULL,        -- order in the source file (cold start takes the first ones)
    question VARCHAR NOT NULL,
    gold VARCHAR NOT NULL,
    solution VARCHAR,
    dagster_run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, side, problem_id)
);

{PROBLEM_RUNS}
{TRAJECTORIES}
{CANDIDATES}
CREATE TABLE IF NOT EXISTS evaluation_scores (
    student VARCHAR NOT NULL,          -- base | cold_start | gen_ssd | standard_kd | posthoc
    model_version VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,
    n INTEGER NOT NULL,                -- questions
    n_correct INTEGER NOT NULL,        -- correct answers, over all samples (accuracy = n_correct / (n * samples))
    accuracy DOUBLE NOT NULL,
    grader_version VARCHAR NOT NULL,
    eval_config_hash VARCHAR NOT NULL, -- limit and EvalSettings.key(): what makes two scores comparable
    model_path VARCHAR,
    dagster_run_id VARCHAR,
    mlflow_run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

{EVALUATION_OUTPUTS}
-- One arm of a method comparison or a knob sweep (core/experiments/comparison.py): what its training data
-- cost and looked like, and the accuracy of the student trained on it. `arm_key` hashes every
-- input, so an interrupted comparison resumes at the first arm not stored; an arm reused by a
-- later experiment (another knob of Gen-SSD leaves Standard KD's arms unchanged) is listed in both.
CREATE TABLE IF NOT EXISTS experiment_arms (
    arm_key VARCHAR NOT NULL,
    experiment VARCHAR NOT NULL,       -- the comparison or sweep this arm belongs to
    kind VARCHAR NOT NULL,             -- comparison | sweep | reference
    label VARCHAR NOT NULL,            -- method, or knob=value
    method VARCHAR NOT NULL,
    seed INTEGER,
    dataset VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,
    accuracy DOUBLE NOT NULL,
    teacher_tokens INTEGER,
    result JSON NOT NULL,              -- the whole ArmResult, config and per-trajectory PPLs included
    dagster_run_id VARCHAR,
    mlflow_run_id VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (arm_key, experiment)
);
"""

# Columns added after a table first shipped: a store made by an earlier version gains them
# (NULL in its old rows) the next time it is opened.
MIGRATIONS = [
    "ALTER TABLE evaluation_outputs ADD COLUMN IF NOT EXISTS ended BOOLEAN",
    "ALTER TABLE evaluation_outputs ADD COLUMN IF NOT EXISTS tokens INTEGER",
    "ALTER TABLE evaluation_scores ADD COLUMN IF NOT EXISTS samples INTEGER DEFAULT 1",  # answers per question
    "ALTER TABLE evaluation_scores ADD COLUMN IF NOT EXISTS eval_settings JSON",  # EvalSettings.record()
]

# Primary keys that grew a column after a table first shipped. DuckDB cannot alter a key, so a store
# made before gets the table rebuilt in one transaction, its rows kept with the new column's default.
def _rebuilt(table: str, ddl: str, columns: str, new_column: str, value: str) -> list[str]:
    """The statements that rebuild `table` with `new_column` in its key, old rows given `value`."""
    return [f"ALTER TABLE {table} RENAME TO {table}_before_{new_column}", ddl,
            f"INSERT INTO {table} ({columns}, {new_column}) SELECT {columns}, {value} FROM {table}_before_{new_column}",
            f"DROP TABLE {table}_before_{new_column}"]


_RUN_COLUMNS = ("dataset, problem_id, method, teacher_version, student_version, config_hash, n_trajectories,"
                " dagster_run_id, created_at")
_TRAJECTORY_COLUMNS = ("trajectory_key, dataset, problem_id, method, sample_index, teacher_version, student_version,"
                       " config_hash, config, dagster_run_id, end_reason, teacher_tokens, student_tokens, ppl,"
                       " predicted, correct, selected, n_steps, question, gold, text, created_at")
_OUTPUT_COLUMNS = ("model_version, benchmark, grader_version, eval_config_hash, problem_id, prompt_sha, completion,"
                   " predicted, gold, correct, created_at, ended, tokens")
KEY_CHANGES = {
    ("evaluation_outputs", "sample_index"): _rebuilt("evaluation_outputs", EVALUATION_OUTPUTS, _OUTPUT_COLUMNS,
                                                     "sample_index", "0"),
    # Work stored before method versions were recorded was made by each method's first version.
    ("problem_runs", "method_version"): _rebuilt("problem_runs", PROBLEM_RUNS, _RUN_COLUMNS, "method_version",
                                                 f"'{FIRST_VERSION}'"),
    ("trajectories", "method_version"): _rebuilt("trajectories", TRAJECTORIES, _TRAJECTORY_COLUMNS, "method_version",
                                                 f"'{FIRST_VERSION}'"),
}


# The trajectory tables' rows now live in Parquet batches (segments.py); the tables above stay in
# the DuckDB file for the rows of old homes until they are migrated. A batch's rows carry two more
# columns: the commit they landed in and, but for candidates, their work key and problem (hashed).
TRAJECTORY_TABLES = {"problem_runs": PROBLEM_RUNS, "trajectories": TRAJECTORIES, "candidates": CANDIDATES}


@lru_cache(maxsize=None)
def _table_types(table: str) -> tuple[tuple[str, str], ...]:
    import duckdb

    con = duckdb.connect()
    con.execute(TRAJECTORY_TABLES[table])
    return tuple(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?"
                             " ORDER BY ordinal_position", [table]).fetchall())


def table_columns(table: str) -> list[str]:
    return [c for c, _ in _table_types(table)]


def batch_columns(table: str) -> list[str]:
    """A batch file's columns, in order: the table's, then problem_key (not for candidates), commit_id."""
    return table_columns(table) + (["commit_id"] if table == "candidates" else
                                                  ["problem_key", "commit_id"])


def empty_select(table: str) -> str:
    """A SELECT of no rows with a batch file's columns and types (a view over no batch yet)."""
    cols = [f"CAST(NULL AS {t}) AS {c}" for c, t in _table_types(table)]
    cols += [f"CAST(NULL AS VARCHAR) AS {c}" for c in batch_columns(table)[len(cols):]]
    return f"SELECT {', '.join(cols)} WHERE false"
