"""The README's picture: each student's accuracy with its 95% interval, and each method's paired
difference from Standard KD, from the scores stored in a home.

    .venv/bin/python scripts/accuracy_figure.py --home .gen_ssd_home [--benchmark demo] [--out docs/images/tour_accuracy.png]

Reads what `gen-ssd report` reads (the latest score of each student on the benchmark), so it draws
the run of `make demo` that wrote the home: one training seed, intervals over test questions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gen_ssd_dagster.core.experiments.comparison_table import LABELS  # noqa: E402
from gen_ssd_dagster.store import Home, Store  # noqa: E402
from gen_ssd_dagster.store.scores import STUDENT_ORDER, latest_scores, paired_differences, score_intervals  # noqa: E402

NAMES = LABELS


def figure(store: Store, benchmark: str, out: Path, title: str) -> None:
    df = latest_scores(store)
    df = df[df.benchmark == benchmark]
    if df.empty:
        raise SystemExit(f"no scores on {benchmark!r} in {store.path}: run `gen-ssd pipeline` first")
    intervals = score_intervals(store, df)
    students = [s for s in STUDENT_ORDER if (s, benchmark) in intervals] + sorted(
        {s for s, b in intervals if b == benchmark} - set(STUDENT_ORDER))
    diffs = {s: d for s, b, d in paired_differences(store, df) if b == benchmark}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for i, s in enumerate(students):
        ci = intervals[s, benchmark]
        left.errorbar(i, 100 * ci.estimate, yerr=[[100 * (ci.estimate - ci.low)], [100 * (ci.high - ci.estimate)]],
                      fmt="o", color=f"C{i}", capsize=6, ms=7)
        left.annotate(f"{100 * ci.estimate:.1f}", (i, 100 * ci.high), textcoords="offset points", xytext=(0, 5),
                      ha="center", fontsize=8)
    left.set_xticks(range(len(students)), [NAMES.get(s, s) for s in students], fontsize=9)
    left.set_ylabel("accuracy % (95% interval)")
    left.set_ylim(bottom=0)
    left.set_title("accuracy of each student")
    methods = [s for s in students if s in diffs and s not in ("base", "cold_start")]
    for i, s in enumerate(methods):
        d = diffs[s]
        right.errorbar(i, 100 * d.estimate, yerr=[[100 * (d.estimate - d.low)], [100 * (d.high - d.estimate)]],
                       fmt="o", color=f"C{students.index(s)}", capsize=6, ms=7)
        right.annotate(f"{100 * d.estimate:+.1f}", (i, 100 * d.high), textcoords="offset points", xytext=(0, 5),
                       ha="center", fontsize=8)
    right.axhline(0, color="grey", lw=0.8)
    right.set_xlim(-0.5, max(len(methods), 1) - 0.5)
    right.set_xticks(range(len(methods)), [NAMES.get(s, s) for s in methods], fontsize=9)
    right.set_ylabel("points (95% interval)")
    right.set_title("− Standard KD, paired by question")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="the home (default: $GEN_SSD_HOME or .gen_ssd_home)")
    parser.add_argument("--benchmark", default="demo")
    parser.add_argument("--out", default="docs/images/tour_accuracy.png")
    parser.add_argument("--title", default="make demo: one training seed, each method at the same teacher-token budget")
    args = parser.parse_args()
    home = Home.resolve(args.home)
    figure(Store(home.db_path), args.benchmark, Path(args.out), args.title)


if __name__ == "__main__":
    main()
