"""Materialization metadata: plots as embedded PNGs, trajectories as markdown."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from .core.experiments.comparison import ArmResult  # noqa: E402
from .core.experiments.comparison_table import LABELS, paired_vs_standard_kd, summarise  # noqa: E402


def _plain_log_ticks(ax) -> None:
    """Log axis labelled 5, 10, 20 rather than overlapping 10^x minor labels over a narrow range."""
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


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
        ax.hist([v for v in rejected if v > 0], bins=bins, alpha=0.6, label=f"rejected ({len(rejected)})",
                edgecolor="C0", histtype="stepfilled")
        ax.hist([v for v in chosen if v > 0], bins=bins, alpha=0.6, label=f"chosen ({len(chosen)})",
                edgecolor="C1", histtype="stepfilled")
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no candidates", ha="center")
    ax.set_xlabel("student perplexity")
    ax.set_ylabel("candidates")
    ax.set_title(title)
    return _png(fig, path)


def calibration_plot(ppls, record, title: str, path: Path | None = None) -> dg.MetadataValue:
    """The student's PPLs of the teacher's first lines and later-line ratios, with the thresholds read
    from them (`core.method.calibration`)."""
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, values, line, label in ((axes[0], ppls.first, record.max_ppl, "first-line PPL"),
                                    (axes[1], ppls.ratios, record.ppl_ratio, "line PPL / PPL of the text before")):
        positive = [v for v in values if v > 0]
        if positive:
            bins = np.logspace(np.log10(min(positive)), np.log10(max(positive) * 1.0001), 30)
            ax.hist(positive, bins=bins, alpha=0.7)
            ax.set_xscale("log")
            _plain_log_ticks(ax)
        rule = f"q{record.quantile:g}" if record.rule == "teacher_quantile" else record.rule
        ax.axvline(line, color="C3", label=f"{rule} = {line:.2f}")
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("teacher lines")
    fig.suptitle(title, fontsize=10)
    return _png(fig, path)


def accuracy_bars(df, path: Path | None = None, intervals: dict | None = None) -> dg.MetadataValue:
    """Accuracy per student, one group of bars per benchmark, with the 95% interval of each as an
    error bar (its larger side, so a clipped interval is not drawn shorter)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    if not df.empty:
        wide = df.pivot(index="benchmark", columns="student", values="accuracy")
        half = wide.copy() * 0.0
        for (student, bench), ci in (intervals or {}).items():
            if ci is not None and student in half.columns and bench in half.index:
                half.loc[bench, student] = max(ci.estimate - ci.low, ci.high - ci.estimate)
        wide.plot.bar(ax=ax, rot=0, yerr=half, capsize=3)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    ax.set_ylabel("accuracy (95% interval)")
    return _png(fig, path)


def trajectory_markdown(sample: dict | None) -> dg.MetadataValue:
    if not sample:
        return dg.MetadataValue.md("(no trajectory)")
    text = str(sample["text"]).replace("```", "'''")
    return dg.MetadataValue.md(
        f"**{sample['problem_id']}** — end: `{sample['end_reason']}`, student PPL: {_round(sample['ppl'])}, "
        f"correct: {sample['correct']}, selected: {sample['selected']}\n\n"
        f"**Question.** {sample['question']}\n\n**Gold.** {sample['gold']}\n\n```\n{text}\n```")


def _round(value):
    return round(value, 2) if isinstance(value, float) else value


def comparison_plot(arms: list[ArmResult], path: Path | None = None) -> dg.MetadataValue:
    """Accuracy per method (mean ± sd, one dot per seed), each method minus Standard KD per seed
    (paired, with the 95% interval of the mean), the PPL of what each trained on, and what its
    data cost: the comparison at a glance."""
    rows = summarise(arms)
    labels = [r["label"] for r in rows]
    names = [LABELS.get(label, label) for label in labels]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    _paired_panel(axes[3], arms, [r for r in rows if r["kind"] != "reference" and r["label"] != "standard_kd"])
    ax = axes[0]
    for i, r in enumerate(rows):
        ax.bar(i, 100 * r["accuracy"].mean, yerr=100 * r["accuracy"].sd, color=f"C{i}", alpha=0.7, capsize=4)
        seeds = [100 * a.accuracy for a in arms if a.label == r["label"]]
        ax.scatter([i] * len(seeds), seeds, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(rows)), names, rotation=20, fontsize=8)
    ax.set_ylabel("accuracy % (mean ± sd; dots = seeds)")
    ax.set_ylim(bottom=0)
    ax.set_title("accuracy of the trained student")
    trained = [r for r in rows if r["kind"] != "reference"]
    ax = axes[1]
    data = [[p for a in arms if a.label == r["label"] for p in a.ppls] or [float("nan")] for r in trained]
    if trained:
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(trained) + 1), [LABELS.get(r["label"], r["label"]) for r in trained],
                      rotation=20, fontsize=8)
    ax.set_ylabel("cold-start student PPL (per token)")
    ax.set_title("PPL of the training trajectories")
    ax = axes[2]
    for i, r in enumerate(trained):
        ax.bar(i - 0.2, r["student_tokens"].mean if r["student_tokens"] else 0, width=0.4, color="C0",
               label="trajectory length (student tokens)" if i == 0 else None)
        ax.bar(i + 0.2, r["tokens_per_accepted"].mean if r["tokens_per_accepted"] else 0, width=0.4, color="C3",
               label="teacher tokens per trajectory" if i == 0 else None)
    ax.set_xticks(range(len(trained)), [LABELS.get(r["label"], r["label"]) for r in trained], rotation=20, fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("length and cost")
    fig.tight_layout()
    return _png(fig, path)


def _paired_panel(ax, arms: list[ArmResult], rows: list[dict]) -> None:
    """Each method − Standard KD: one dot per seed (paired), the mean and its 95% interval."""
    kd = {a.seed: a.accuracy for a in arms if a.label == "standard_kd"}
    for i, r in enumerate(rows):
        dots = [100 * (a.accuracy - kd[a.seed]) for a in arms if a.label == r["label"] and a.seed in kd]
        ax.scatter([i] * len(dots), dots, color="k", s=12, zorder=3)
        paired = paired_vs_standard_kd(arms, r["label"])
        if paired:
            ax.errorbar(i, 100 * paired["estimate"], yerr=100 * paired["half"], fmt="o", color=f"C{i}", capsize=6)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_xticks(range(len(rows)), [LABELS.get(r["label"], r["label"]) for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("points (dots = seeds; bar = 95% interval)")
    ax.set_title("− Standard KD, paired by seed and question")


def sweep_plot(arms: list[ArmResult], knobs: dict[str, list], path: Path | None = None) -> dg.MetadataValue:
    """One panel per knob: accuracy (left axis) and teacher tokens per trajectory (right) by value."""
    fig, axes = plt.subplots(1, max(1, len(knobs)), figsize=(4.2 * max(1, len(knobs)), 3.2), squeeze=False)
    for ax, (knob, values) in zip(axes[0], knobs.items()):
        points = [next((a for a in arms if a.label == f"{knob}={v}"), None) for v in values]
        xs = [str(v) for v, a in zip(values, points) if a is not None]
        done = [a for a in points if a is not None]
        ax.plot(xs, [100 * a.accuracy for a in done], "o-", color="C0")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("accuracy %", color="C0")
        ax.set_xlabel(knob)
        twin = ax.twinx()
        twin.plot(xs, [a.tokens_per_accepted or 0 for a in done], "s--", color="C3")
        twin.set_ylim(bottom=0)
        twin.set_ylabel("teacher tokens / trajectory", color="C3")
        ax.set_title(knob)
    fig.tight_layout()
    return _png(fig, path)


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
