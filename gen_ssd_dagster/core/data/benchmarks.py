"""Benchmarks as `Problem` records: built-in specs, specs from configuration, and a strict loader.

A `DatasetSpec` says where a benchmark comes from (a hub id and/or a JSON Lines file under a data
directory) and how to read a row (question field or template, answer field and its format). Bad
input gets one `DataError` naming the file, the row and the setting, and nothing partial is
returned: local files are checked line by line before `datasets` sees them, because its own errors
on a bad row ("Expected object or value") name neither.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

from gen_ssd_dagster.core.errors import ConfigError, DataError
from gen_ssd_dagster.core.data.grading import NUMBER, extract_boxed, extract_gsm8k
from gen_ssd_dagster.core.data.solution_text import SOLUTION_ENDS
from gen_ssd_dagster.core.types import Problem

ANSWER_FORMATS = ("gsm8k", "boxed", "plain", "number", "leading_number")


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one side (train or test) of a benchmark.

    name: prefix of every problem_id: `f"{name}-{id}"` (an id already starting "<name>-" is kept).
    hub_id, hub_config, split: where online users load it from (`datasets.load_dataset`).
    local_file: a JSON Lines file, relative to the data directory passed to `load_problems`
        (an absolute path is used as is, with or without a data directory).
    question_field or question_template: the question is a field, or `str.format` over fields.
    answer_field, answer_format: the gold answer and how to read it: "gsm8k" (after `####`),
        "boxed" (last `\\boxed{}`), "plain" (the value as text, `27.0` kept), "number" (a number,
        written canonically: `025` -> `25`, `27.0` -> `27`), "leading_number" (the first number
        in the text, for golds with units or words: "9 (apples)" -> 9, "$18.00" -> 18,
        "3 hours" -> 3, "1,200 km" -> 1200).
    answer_regex: a regular expression applied to the answer field before answer_format; its
        first group (or the whole match) is the gold, e.g. "answer is (.+)". A row it does not
        match is an error naming the row.
    solution_end: where a solution to this dataset ends by default, besides the model's end of
        turn (see `solution_text.SolutionEnd`): "eos", "answer_line" (the demo world's `#### N`)
        or "boxed". A run's `solution_end` setting overrides it.
    id_field: a stable row id; without it, the 0-based row index.
    solution_field: an optional worked reference solution.
    """

    name: str
    answer_field: str = "answer"
    question_field: str | None = None
    question_template: str | None = None
    answer_format: str = "plain"
    hub_id: str | None = None
    hub_config: str | None = None
    split: str = "test"
    local_file: str | None = None
    id_field: str | None = None
    solution_field: str | None = None
    answer_regex: str | None = None
    solution_end: str = "eos"

    def template_fields(self) -> list[str]:
        """The fields a question_template refers to (empty when question_field is used)."""
        if self.question_template is None:
            return []
        try:
            parsed = list(string.Formatter().parse(self.question_template))
        except ValueError as e:
            raise ConfigError(f"dataset {self.name!r}: question_template is not a valid format string: {e}") from e
        names = [f for _, f, _, _ in parsed if f is not None]
        for f in names:
            if f == "" or f.isdigit():
                raise ConfigError(
                    f"dataset {self.name!r}: question_template must use named fields like {{problem}}, got {{{f}}}"
                )
        # "{a.b}" / "{a[0]}" reach into a field; the row must have the field itself.
        return list(dict.fromkeys(f.split(".")[0].split("[")[0] for f in names))

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"dataset setting {f.name} must be a string, got {type(v).__name__} {v!r}")
        if not self.name or not self.name.strip() or any(c.isspace() for c in self.name):
            raise ConfigError(f"dataset setting name must be a non-empty word, got {self.name!r}")
        where = f"dataset {self.name!r}:"
        if (self.question_field is None) == (self.question_template is None):
            raise ConfigError(f"{where} set exactly one of question_field or question_template")
        if self.question_field is not None and not self.question_field.strip():
            raise ConfigError(f"{where} question_field is empty")
        if self.question_template is not None and not self.template_fields():
            raise ConfigError(f"{where} question_template refers to no field: {self.question_template!r}")
        if not self.answer_field or not self.answer_field.strip():
            raise ConfigError(f"{where} answer_field is empty")
        if self.answer_format not in ANSWER_FORMATS:
            raise ConfigError(f"{where} answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except re.error as e:
                raise ConfigError(f"{where} answer_regex {self.answer_regex!r} is not a regular expression: {e}") from e
        if self.solution_end not in SOLUTION_ENDS:
            raise ConfigError(f"{where} solution_end must be one of {SOLUTION_ENDS}, got {self.solution_end!r}")
        if not self.hub_id and not self.local_file:
            raise ConfigError(f"{where} set hub_id or local_file (or both)")
        if self.hub_id and not self.split:
            raise ConfigError(f"{where} split is empty")
        for key in ("id_field", "solution_field", "hub_config", "local_file", "answer_regex"):
            v = getattr(self, key)
            if v is not None and not v.strip():
                raise ConfigError(f"{where} {key} is empty; leave it out instead")


def dataset_spec_from_dict(d: dict) -> DatasetSpec:
    """A validated DatasetSpec from configuration (YAML/TOML/Dagster). Unknown keys are an error."""
    if not isinstance(d, dict):
        raise ConfigError(f"a dataset spec must be a mapping, got {type(d).__name__}")
    allowed = [f.name for f in dataclasses.fields(DatasetSpec)]
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown dataset setting(s) {unknown}; allowed: {allowed}")
    if "name" not in d:
        raise ConfigError("dataset setting name is required")
    spec = DatasetSpec(**d)
    spec.validate()
    return spec


def _both(name: str, hub_id: str | None, hub_config: str | None, files: dict[str, str], **kw) -> dict:
    return {
        side: DatasetSpec(name=name, hub_id=hub_id, hub_config=hub_config, split=side, local_file=f, **kw)
        for side, f in files.items()
    }


# Keyed by dataset, then side. Field names match both the hub copy and the files in the data dir.
BUILTIN_DATASETS: dict[str, dict[str, DatasetSpec]] = {
    # Written by core/demo/world.py into a directory the caller passes as data_dir.
    "demo": _both(
        "demo", None, None, {"train": "train.jsonl", "test": "test.jsonl"},
        question_field="question", answer_format="gsm8k", id_field="id", solution_field="answer",
        solution_end="answer_line",
    ),
    "gsm8k": _both(
        "gsm8k", "openai/gsm8k", "main", {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        question_field="question", answer_format="gsm8k", solution_field="answer",
    ),
    "math500": _both(
        "math500", "HuggingFaceH4/MATH-500", None, {"test": "math500/test.jsonl"},
        question_field="problem", answer_format="plain", id_field="unique_id", solution_field="solution",
    ),
    "aime24": _both(
        "aime24", "HuggingFaceH4/aime_2024", None, {"test": "aime24/test.jsonl"},
        question_field="problem", answer_format="number", id_field="id", solution_field="solution",
    ),
    # The local file has both `problem` and `question`; the hub copy (math-ai/amc23) has `question`.
    "amc23": _both(
        "amc23", "math-ai/amc23", None, {"test": "amc23/test.jsonl"},
        question_field="question", answer_format="plain", id_field="id",
    ),
}


# ---------------------------------------------------------------- reading rows


def _json_kind(v: Any) -> str:
    # int and float share a column in Arrow; str and number do not.
    return {bool: "bool", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


ON_BAD_ROW = ("error", "skip")


@dataclass(frozen=True)
class SkippedRow:
    """A row left out under `on_bad_row: skip`: where it is (file and line, or hub row) and why."""

    where: str
    reason: str


@dataclass(frozen=True)
class LoadedProblems:
    problems: list[Problem]
    skipped: list[SkippedRow]


def _bad(where: str, reason: str, skip: bool, skipped: list[SkippedRow]) -> None:
    if not skip:
        raise DataError(f"{where}: {reason}")
    skipped.append(SkippedRow(where, reason))


def _parse_line(raw: bytes) -> dict | str | None:
    """The row of one line, None for a blank line, or why it is not a row."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text ({e.reason} at byte {e.start})"
    if not text.strip():
        return None  # blank lines (e.g. the final newline) are not rows
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return f"malformed JSON ({e.msg} at column {e.colno})"
    return row if isinstance(row, dict) else f"a row must be a JSON object, got {_json_kind(row)}"


def _check_jsonl(path: Path, skip: bool = False, skipped: list[SkippedRow] | None = None) -> list[tuple[int, int]]:
    """Check a JSON Lines file before `datasets` reads it; return the 1-based line and the 0-based
    row index (non-blank lines before it, bad ones included: ids stay put) of each good row.

    A field must have one JSON kind in every row (Arrow's column type): when rows are skipped, the
    kind most rows have wins, so one odd row (a name among numbers) is the one left out."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (setting local_file)")
    skipped = skipped if skipped is not None else []
    rows: list[tuple[int, dict]] = []
    index: dict[int, int] = {}  # line -> row index
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        row = _parse_line(raw)
        if row is not None:
            index[n] = len(index)
        if isinstance(row, str):
            _bad(f"{path}, line {n}", row, skip, skipped)
        elif row is not None:
            rows.append((n, row))
    kinds: dict[str, dict[str, int]] = {}  # field -> JSON kind -> first line having it
    for n, row in rows:
        for k, v in row.items():
            if (kind := _json_kind(v)) != "null":
                kinds.setdefault(k, {}).setdefault(kind, n)
    if skip:
        counts = {k: {kind: sum(_json_kind(r.get(k)) == kind for _, r in rows) for kind in ks} for k, ks in kinds.items()}
        want = {k: max(c, key=c.get) for k, c in counts.items()}
    else:
        want = {k: next(iter(ks)) for k, ks in kinds.items()}
    lines: list[tuple[int, int]] = []
    for n, row in rows:
        odd = [(k, kind) for k, v in row.items() if (kind := _json_kind(v)) not in ("null", want[k])]
        if odd:
            k, kind = odd[0]
            _bad(f"{path}, line {n}", f"field {k!r} is a {kind} but a {want[k]} on line {kinds[k][want[k]]}"
                 + (" and most rows;" if skip else ";") + " a field must have one type in every row", skip, skipped)
        else:
            lines.append((n, index[n]))
    if not lines:
        raise DataError(f"{path}: the file has no rows (setting local_file)"
                        + (f"; all {len(skipped)} were bad, the first: {skipped[0].reason}" if skipped else ""))
    return lines


def _canonical_number(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        d = Decimal(str(v).strip().replace(",", ""))
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _gold(spec: DatasetSpec, value: Any) -> str | None:
    """The gold final answer under spec.answer_regex and spec.answer_format, or None when it
    cannot be read."""
    fmt = spec.answer_format
    if spec.answer_regex is not None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return None
        m = re.search(spec.answer_regex, str(value))
        if m is None:
            return None
        value = (m.group(1) if m.groups() else m.group(0)).strip()
    if fmt == "number":
        return _canonical_number(value)
    if fmt == "leading_number":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return None
        m = NUMBER.search(str(value))
        return _canonical_number(m.group(0)) if m else None
    if fmt == "plain":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return None
        return str(value).strip() or None
    if not isinstance(value, str):
        return None
    return extract_gsm8k(value) if fmt == "gsm8k" else extract_boxed(value)


_HOW = {
    "gsm8k": "a text ending in a '#### <answer>' line",
    "boxed": "a text with a non-empty \\boxed{...}",
    "plain": "a non-empty text or number",
    "number": "a number",
    "leading_number": "a text holding a number",
}


def _problem(spec: DatasetSpec, row: dict, index: int, where: str) -> Problem:
    present = [k for k, v in row.items() if v is not None]

    def need(field: str, setting: str) -> Any:
        if row.get(field) is None:
            raise DataError(f"{where}: missing field {field!r} (setting {setting}); the row has fields {present}")
        return row[field]

    if spec.question_field is not None:
        question = need(spec.question_field, "question_field")
        if not isinstance(question, str):
            raise DataError(f"{where}: field {spec.question_field!r} (setting question_field) must be text")
    else:
        for f in spec.template_fields():
            need(f, "question_template")
        try:
            question = spec.question_template.format(**row)
        except (KeyError, IndexError, AttributeError, ValueError) as e:
            raise DataError(f"{where}: question_template cannot be filled from this row: {e!r}") from None
    if not question.strip():
        raise DataError(f"{where}: the question is empty (setting {'question_field' if spec.question_field else 'question_template'})")

    raw_answer = need(spec.answer_field, "answer_field")
    gold = _gold(spec, raw_answer)
    if gold is None:
        raise DataError(
            f"{where}: field {spec.answer_field!r} (setting answer_field) is not {_HOW[spec.answer_format]}"
            f" as answer_format {spec.answer_format!r} requires"
            + (f" (or does not match answer_regex {spec.answer_regex!r})" if spec.answer_regex else "")
            + f"; got {str(raw_answer)[-120:]!r}"
        )

    solution = None
    if spec.solution_field is not None:
        solution = need(spec.solution_field, "solution_field")
        if not isinstance(solution, str):
            raise DataError(f"{where}: field {spec.solution_field!r} (setting solution_field) must be text")

    rid = str(need(spec.id_field, "id_field")) if spec.id_field else str(index)
    # Ids already written as "<name>-..." (the demo's) are not prefixed twice.
    pid = rid if rid.startswith(f"{spec.name}-") else f"{spec.name}-{rid}"
    return Problem(dataset=spec.name, problem_id=pid, question=question, gold=gold, solution=solution)


def _to_problems(spec: DatasetSpec, rows: Iterable[dict], labels: list[str], skip: bool = False,
                 skipped: list[SkippedRow] | None = None, indices: list[int] | None = None) -> list[Problem]:
    problems, seen = [], {}
    skipped = skipped if skipped is not None else []
    for j, (row, where) in enumerate(zip(rows, labels)):
        i = indices[j] if indices is not None else j
        try:
            p = _problem(spec, row, i, where)
        except DataError as e:
            if not skip:
                raise
            skipped.append(SkippedRow(where, str(e).removeprefix(f"{where}: ")))
            continue
        if p.problem_id in seen:
            _bad(where, f"problem_id {p.problem_id!r} repeats {seen[p.problem_id]} (setting id_field)", skip, skipped)
            continue
        seen[p.problem_id] = where
        problems.append(p)
    if not problems and skipped:
        raise DataError(f"{labels[0].rsplit(',', 1)[0]}: every row is bad ({len(skipped)}); the first,"
                        f" {skipped[0].where}: {skipped[0].reason}")
    return problems


def _load_local(spec: DatasetSpec, path: Path, skip: bool, skipped: list[SkippedRow]) -> list[Problem]:
    lines = _check_jsonl(path, skip, skipped)
    from datasets import load_dataset  # heavy import, only when loading

    source = path
    if skipped:  # `datasets` reads the good lines only, from a copy
        import tempfile

        keep = {n for n, _ in lines}
        tmp = tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False)
        with tmp:
            tmp.writelines(raw + b"\n" for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1) if n in keep)
        source = Path(tmp.name)
    try:
        ds = load_dataset("json", data_files=str(source), split="train")
    except Exception as e:  # checked above, so this is unexpected: still say which file
        raise DataError(f"{path}: datasets could not read the file: {type(e).__name__}: {e}") from e
    finally:
        if source != path:
            source.unlink()
    if len(ds) != len(lines):
        raise DataError(f"{path}: datasets read {len(ds)} rows but the file has {len(lines)}")
    return _to_problems(spec, ds, [f"{path}, line {n}" for n, _ in lines], skip, skipped, [i for _, i in lines])


def _load_hub(spec: DatasetSpec, skip: bool, skipped: list[SkippedRow]) -> list[Problem]:
    from datasets import load_dataset

    src = f"{spec.hub_id} (config {spec.hub_config}, split {spec.split})"
    try:
        ds = load_dataset(spec.hub_id, spec.hub_config, split=spec.split)
    except Exception as e:
        raise DataError(
            f"{src}: could not load from the hub (setting hub_id): {type(e).__name__}: {e}."
            " Offline? Pass a data_dir holding the spec's local_file."
        ) from e
    if len(ds) == 0:
        raise DataError(f"{src}: the dataset has no rows")
    return _to_problems(spec, ds, [f"{src}, row {i + 1}" for i in range(len(ds))], skip, skipped)


def load_problems(
    spec: DatasetSpec,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int | None = None,
) -> list[Problem]:
    """Load a benchmark side as Problems, all rows checked first (one DataError, nothing partial).

    The local file (data_dir / spec.local_file) is used when data_dir is given and the spec has
    one, or when local_file is absolute; otherwise the hub. `limit` keeps the first N rows, or a sample of N seeded by `seed`
    (in file order); `seed` alone changes nothing. problem_id is f"{name}-{id}", stable across runs
    (ids that already start with f"{name}-" are kept as they are).
    """
    return load_problems_checked(spec, data_dir, limit, seed).problems


def load_problems_checked(
    spec: DatasetSpec,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int | None = None,
    on_bad_row: str = "error",
) -> LoadedProblems:
    """`load_problems`, with `on_bad_row`: "error" (a bad row refuses the whole file, as
    `load_problems` does) or "skip" (bad rows are left out and returned in `skipped`, each with its
    place and reason; a file with no good row is still an error). `limit` counts good rows."""
    spec.validate()
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    skip, skipped = on_bad_row == "skip", []
    if spec.local_file and (data_dir is not None or Path(spec.local_file).is_absolute()):
        problems = _load_local(spec, Path(data_dir or "/") / spec.local_file, skip, skipped)  # absolute wins the join
    elif spec.hub_id:
        problems = _load_hub(spec, skip, skipped)
    else:
        raise ConfigError(f"dataset {spec.name!r} has only a local_file ({spec.local_file}); pass data_dir")
    if limit is not None and limit < len(problems):
        keep = range(limit) if seed is None else sorted(random.Random(seed).sample(range(len(problems)), limit))
        problems = [problems[i] for i in keep]
    return LoadedProblems(problems, skipped)
