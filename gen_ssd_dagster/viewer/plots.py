"""The distributions of a selection of trajectories, as one PNG."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .queries import PLOT_SAMPLE  # noqa: E402


def _log_bins(values: list[float], n: int = 40):
    positive = [v for v in values if v > 0]
    if not positive:
        return n
    lo, hi = min(positive), max(positive)
    return np.geomspace(lo, hi if hi > lo else lo * 1.01, n)


def distributions_png(d: dict) -> bytes:
    """Chosen vs rejected candidate PPL, the step where pruned paths died, and length by method."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    ppl_ax, prune_ax, length_ax = axes
    both = d["chosen"] + d["rejected"]
    if both:
        bins = _log_bins(both)
        for name, color in (("rejected", "C3"), ("chosen", "C0")):
            ppl_ax.hist(np.asarray(d[name], dtype=float), bins=bins, alpha=0.6, histtype="stepfilled",
                        label=f"{name} ({len(d[name])})", color=color)
        ppl_ax.set_xscale("log")
        ppl_ax.legend(fontsize=8)
    else:
        ppl_ax.text(0.5, 0.5, "no scored candidates\n(whole-sample methods)", ha="center", va="center",
                    transform=ppl_ax.transAxes)
    ppl_ax.set(title="candidate PPL (student)", xlabel="PPL")
    if d["prune_steps"]:
        top = max(d["prune_steps"])
        prune_ax.hist(np.asarray(d["prune_steps"]), bins=np.arange(0.5, top + 1.5), color="C1", histtype="stepfilled")
    else:
        prune_ax.text(0.5, 0.5, "no pruned paths", ha="center", va="center", transform=prune_ax.transAxes)
    prune_ax.set(title="step where a path was pruned", xlabel="step (1 = first chunk)")
    for i, (method, values) in enumerate(sorted(d["lengths"].items())):
        length_ax.hist(np.asarray(values), bins=30, label=f"{method} ({len(values)})", color=f"C{i}",
                       histtype="step", linewidth=1.5)
    if d["lengths"]:
        length_ax.legend(fontsize=8)
    length_ax.set(title="accepted length", xlabel="student tokens")
    fig.suptitle(f"{d['trajectories']} trajectories" + (" (a random sample)" if d["trajectories"] >= PLOT_SAMPLE else ""),
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
