"""Peak memory of training from an exported dataset: streamed (what the distilled student does) against
the trainer as it was before streaming (commit 5aa72f4: the rows read into a list, every one
tokenized up front), at two sizes.

    python benchmarks/training_memory.py [--sizes 20000,200000] [--steps 40] [--home DIR]

Each size is a synthetic home (benchmarks/export_at_scale.py's `fill`: ~300-character solutions,
no pruned rows) exported as a Hugging Face dataset. Then, each in a fresh child process reporting
its own peak RSS: `fine_tune` of a tiny Llama (the tests' `build_tiny_model`: 64 wide, 2 layers)
for `--steps` optimizer steps of 16 examples, given
  - stream: `ExportedExamples` (one counting pass, then `shuffle_buffer` examples at a time);
  - before: 5aa72f4's `fine_tune` (read from git into a temp file) on `list(training_pairs(folder))`.
The step count is fixed (epochs = steps x 16 / size), so both arms do the same training and the
memory that differs is the data's. Printed: seconds and peak RSS per arm and size, the ratio
before / stream, and each arm's growth from the small size to the large one. The goal (issue 30):
the stream's peak does not grow with the size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from export_at_scale import KEY, fill  # noqa: E402

from gen_ssd_dagster.export import dataset_dir, export_dataset, read_manifest  # noqa: E402
from gen_ssd_dagster.store import Home  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from gen_ssd_dagster.core.training.sft import TrainConfig, fine_tune
from gen_ssd_dagster.export.reading import ExportedExamples, training_pairs
model, folder, digest, arm, steps, size, out, before = sys.argv[1:9]
start = time.perf_counter()
if arm == "stream":
    examples = ExportedExamples.of([Path(folder)], [digest])
else:
    import importlib.util
    spec = importlib.util.spec_from_file_location("sft_before", before)
    old = sys.modules["sft_before"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    fine_tune, TrainConfig, examples = old.fine_tune, old.TrainConfig, list(training_pairs(Path(folder)))
config = TrainConfig(epochs=int(steps) * 16 / int(size), batch_size=16, max_length=256, log_every=1000)
result = fine_tune(model, examples, out, config)
print(json.dumps({"steps": result.steps, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


BEFORE = "5aa72f4"  # the last commit whose trainer held every example in memory


def child(model: Path, folder: Path, digest: str, arm: str, steps: int, size: int, out: Path, before: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(model), str(folder), digest, arm, str(steps), str(size),
                           str(out), str(before)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{arm} at {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000", help="kept rows per synthetic export, comma-separated")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--home", help="where to build the homes (default: a temp dir); homes already there are reused")
    args = parser.parse_args()
    from conftest import build_tiny_model

    root = Path(args.home or tempfile.mkdtemp(prefix="training-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    before = root / "sft_before.py"
    before.write_text(subprocess.run(["git", "show", f"{BEFORE}:gen_ssd_dagster/core/training/sft.py"], check=True,
                                     capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout)
    model = build_tiny_model(root / "model", vocab_size=300, hidden=64, layers=2, seed=0)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[str, int], dict] = {}
    for size in sizes:
        home = Home.resolve(root / f"home-{size}").make()
        start = time.perf_counter()
        if read_manifest(dataset_dir(home, KEY)) is None:  # a home of an earlier run (--home) is reused
            fill(home, size, 0, 6)
        export = export_dataset(home, KEY)
        print(f"{size} kept rows exported in {time.perf_counter() - start:.0f} s "
              f"({export.parquet_bytes / 1e6:.0f} MB Parquet, {export.text_bytes / 1e6:.0f} MB text)", flush=True)
        for arm in ("stream", "before"):
            r = results[arm, size] = child(model, export.path, export.digest, arm, args.steps, size,
                                           root / f"out-{arm}-{size}", before)
            print(f"  {arm:6s} {r['steps']} steps  {r['seconds']:6.1f} s  {r['peak_rss_mb']:6.0f} MB peak RSS", flush=True)
        print(f"  before / stream peak RSS: {results['before', size]['peak_rss_mb'] / results['stream', size]['peak_rss_mb']:.2f}x")
    small, large = sizes[0], sizes[-1]
    for arm in ("stream", "before"):
        a, b = results[arm, small]["peak_rss_mb"], results[arm, large]["peak_rss_mb"]
        print(f"{arm}: peak RSS at {large} / at {small} rows: {b / a:.2f}x ({a:.0f} -> {b:.0f} MB)")


if __name__ == "__main__":
    main()
