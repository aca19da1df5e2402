"""The card's picture: trajectory PPL and length, kept vs not kept, as one PNG of stable bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SAMPLE_CAP = 200_000  # values kept per series: a plot and quantiles need no more at any size


class Sample:
    """Every `stride`-th value of a stream: the stride doubles whenever the cap is reached, so memory
    stays bounded and the same stream always gives the same sample."""

    def __init__(self, cap: int = SAMPLE_CAP):
        self.cap, self.stride, self.seen, self.values = cap, 1, 0, []

    def extend(self, values) -> None:
        for v in values:
            if v is not None and self.seen % self.stride == 0:
                self.values.append(float(v))
                if len(self.values) >= self.cap:
                    self.values, self.stride = self.values[::2], self.stride * 2
            self.seen += 1

    def quantiles(self) -> dict | None:
        """min, quartiles, max and mean of the sampled values (None when there are none)."""
        if not self.values:
            return None
        q = np.quantile(np.asarray(self.values), [0, 0.25, 0.5, 0.75, 1])
        return {"min": q[0], "p25": q[1], "median": q[2], "p75": q[3], "max": q[4],
                "mean": float(np.mean(self.values))}


def distributions_png(series: dict[str, dict[str, Sample]], title: str) -> bytes:
    """`series` = {"ppl": {"kept": Sample, "not kept": Sample}, "student_tokens": {...}}: one panel each."""
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.2))
    for ax, (name, groups) in zip(np.atleast_1d(axes), series.items()):
        values = [v for s in groups.values() for v in s.values]
        if not values:
            ax.text(0.5, 0.5, f"no {name} values", ha="center", va="center", transform=ax.transAxes)
            continue
        log = name == "ppl" and min(values) > 0
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1
        bins = np.geomspace(lo, hi, 40) if log else np.linspace(lo, hi, 40)
        for i, (group, sample) in enumerate(groups.items()):
            if sample.values:
                ax.hist(np.asarray(sample.values), bins=bins, alpha=0.6, histtype="stepfilled", color=f"C{i}",
                        label=f"{group} ({sample.seen})")
        if log:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
        ax.set(title=f"trajectory {name}", xlabel="student PPL" if name == "ppl" else "student tokens",
               ylabel="trajectories")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)
    return buf.getvalue()
