"""Materialization metadata: plots as embedded PNGs, trajectories as markdown."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig, path: Path | None) -> dg.MetadataValue:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dg.MetadataValue.md(f"![plot](data:image/png;base64,{base64.b64encode(data).decode()})")


def ppl_histogram(chosen: list[float], rejected: list[float], title: str, path: Path | None = None) -> dg.MetadataValue:
    """Student PPL of chosen vs rejected candidates, log-spaced bins."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    values = [v for v in chosen + rejected if v and v > 0]
    if values:
        bins = np.logspace(np.log10(min(values)), np.log10(max(values) * 1.0001), 30)
        ax.hist([v for v in rejected if v > 0], bins=bins, alpha=0.6, label=f"rejected ({len(rejected)})")
        ax.hist([v for v in chosen if v > 0], bins=bins, alpha=0.6, label=f"chosen ({len(chosen)})")
        ax.set_xscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no candidates", ha="center")
    ax.set_xlabel("student perplexity")
    ax.set_ylabel("candidates")
    ax.set_title(title)
    return _png(fig, path)


def accuracy_bars(df, path: Path | None = None) -> dg.MetadataValue:
    """Accuracy per student, one group of bars per benchmark."""
    fig, ax = plt.subplots(figsize=(6, 3))
    if not df.empty:
        wide = df.pivot(index="benchmark", columns="student", values="accuracy")
        wide.plot.bar(ax=ax, rot=0)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    ax.set_ylabel("accuracy")
    return _png(fig, path)


def trajectory_markdown(sample: dict | None) -> dg.MetadataValue:
    if not sample:
        return dg.MetadataValue.md("(no trajectory)")
    text = str(sample["text"]).replace("```", "'''")
    return dg.MetadataValue.md(
        f"**{sample['problem_id']}** — end: `{sample['end_reason']}`, student PPL: {sample['ppl']}, "
        f"correct: {sample['correct']}, selected: {sample['selected']}\n\n"
        f"**Question.** {sample['question']}\n\n**Gold.** {sample['gold']}\n\n```\n{text}\n```")


def clean(d: dict) -> dict:
    """Metadata values Dagster accepts: drop None, round floats, cast numpy scalars."""
    out = {}
    for k, v in d.items():
        if v is None:
            continue
        if hasattr(v, "item"):
            v = v.item()
        out[k] = round(v, 4) if isinstance(v, float) else v
    return out
