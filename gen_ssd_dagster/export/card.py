"""The dataset card (README.md): a YAML header the Hugging Face hub reads, then how the data was made.

Only stored facts go in (no clock time), so the same work gives the same card, byte for byte.
"""

from __future__ import annotations

import json

import yaml

PLOT_FILE = "distributions.png"
KEPT_DIR, ALL_DIR = "data", "all"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def header(title: str, kept: int, files: dict[str, list[str]]) -> str:
    """The YAML header. `files` = {config: its Parquet files}, named explicitly: `datasets` keys its
    cache of a local folder by these paths alone (not by the files' dates), and the file names carry
    their content's hash, so a changed export is never served from a stale cache."""
    meta = {
        "pretty_name": title, "task_categories": ["text-generation"],
        "tags": ["gen-ssd", "distillation", "synthetic", "reasoning"], "size_categories": [_size_category(kept)],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": files[KEPT_DIR]}], "default": True},
            {"config_name": "all", "data_files": [{"split": "train", "path": files[ALL_DIR]}]},
        ],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def card(info: dict) -> str:
    """The whole README.md; `info` is what export.writer gathered (see its `_card_info`)."""
    key, s, cfg = info["work_key"], info["summary"], info["config"]
    kept = info["kept"]
    title = f"Gen-SSD distillation data: {key['method']} on {key['dataset']}"
    keep = (cfg.get("sampling") or {}).get("keep", "correct")
    per_kept = s["teacher_tokens"] / kept if kept else None
    lines = [
        header(title, kept, info["files"]), f"# {title}", "",
        f"Teacher solutions of the **{key['dataset']}** training problems, selected by **{key['method']}** "
        f"(method version {key['method_version']}) and exported by gen-ssd-dagster {info['project_version']}. "
        f"The `default` configuration holds the {kept} trajectories kept for training under `keep: {keep}` "
        f"({'finished solutions whose answer matches the gold' if keep == 'correct' else 'every finished solution'}); "
        f"the `all` configuration holds every one of the {s['trajectories']} trajectories, pruned ones included, "
        "with each step's candidates, their student perplexities and which one was chosen.", "",
        *(["**This export keeps no trajectory**: `default` is an empty file, which `datasets.load_dataset` "
           "refuses (\"corresponds to no data\"); load `all` to see why nothing was kept.", ""] if not kept else []),
        "## Models", "",
        "| role | version | model |", "|---|---|---|",
        f"| teacher | `{key['teacher_version']}` | {info.get('teacher') or ''} |",
        f"| scorer (cold-start student) | `{key['student_version'] or '(none: the method scores nothing)'}` | "
        f"{info.get('scorer') or ''} |", "",
        f"Messages are written for the student's prompt format: system prompt "
        f"{json.dumps(info['prompt']['system_prompt'])}, instruction {json.dumps(info['prompt']['instruction'])} "
        "(appended to the question after a blank line). The assistant turn is the teacher's text as generated, "
        "with no template tokens.", "",
        "## Method and every knob", "",
        f"Config hash `{key['config_hash']}`:", "", "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", "",
        "## Counts", "",
        "| problems | trajectories | kept | finished | pruned | length-capped | correct |", "|---|---|---|---|---|---|---|",
        f"| {s['problems']} | {s['trajectories']} | {kept} | {s['finished']} | {s['pruned']} | {s['length_capped']} "
        f"| {s['correct']} |", "",
        f"Teacher tokens spent: {s['teacher_tokens']} in all"
        + (f", {per_kept:.1f} per kept trajectory." if per_kept is not None else " (nothing kept)."), "",
        "## Distributions", "", f"![PPL and length distributions]({PLOT_FILE})", "",
        "| trajectories | series | min | p25 | median | p75 | max | mean |", "|---|---|---|---|---|---|---|---|",
    ]
    for series, groups in info["quantiles"].items():
        for group, q in groups.items():
            if q:
                lines.append(f"| {group} | {series} | " + " | ".join(_fmt(q[k]) for k in
                                                                 ("min", "p25", "median", "p75", "max", "mean")) + " |")
    lines += [
        "", "## Source", "",
        f"Dataset `{key['dataset']}`, split `train` (the problems side the trajectories were generated from)"
        + (f": {info['source']}" if info.get("source") else "") + ".", "",
        "## Columns", "",
        "`messages` (system?, user, assistant), `prompt` and `completion` (the same turns split for TRL's "
        "prompt-completion format), then the raw fields: `problem_id`, `sample_index`, `question`, `gold`, "
        "`predicted`, `correct`, `end_reason` (finished | pruned | length_cap), `ppl` (student perplexity of the "
        "trajectory), `student_tokens`, `teacher_tokens`, `n_steps`, `method`, `method_version`, `config_hash`, "
        "`teacher_version`, `scorer_version`, `dataset`, `trajectory_key`, "
        f"`shard` (of {info['shards']}). `all` adds `selected` and `steps`.", "",
        "## Use", "", "```python", "from datasets import load_dataset", "",
        'kept = load_dataset("PATH_OR_REPO", split="train")          # what the student trains on',
        'everything = load_dataset("PATH_OR_REPO", "all", split="train")  # with steps and candidates', "```", "",
        "## Reproduce", "", "```bash", *info["commands"], "```", "",
    ]
    return "\n".join(lines)
