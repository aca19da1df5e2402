"""`gen-ssd`: the user's entry point for what is not Dagster (demo, report, ...).

One small function per subcommand; the work lives in the library.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from pathlib import Path

from gen_ssd_dagster.core.errors import GenSSDError
from gen_ssd_dagster.core.method.threshold_rules import THRESHOLD_RULES
from gen_ssd_dagster.store.home import Home, default_home


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the library demo (no Dagster): every method on the embedded demo world."""
    import time

    from gen_ssd_dagster.core.demo.run import DemoConfig, run_demo

    started = time.perf_counter()
    result = run_demo(Path(args.home) / "library_demo", DemoConfig(seed=args.seed, device=args.device))
    print(f"\nAccuracy on the demo test split ({time.perf_counter() - started:.0f}s in all):")
    width = max(map(len, result.accuracy))
    for name, acc in result.accuracy.items():
        print(f"  {name:<{width}}  {acc:6.1%}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """Materialize the Dagster asset graph (embedded demo by default), then print the scores. On
    the demo partition this is the tour (gen_ssd_dagster/tour.py): every method at the tour's
    teacher-token budget, said first, with a table of what each arm spent and scored last."""
    home = Home.resolve(args.home).export()  # before the definitions load (datasets.yaml)
    from gen_ssd_dagster import tour
    from gen_ssd_dagster.pipeline import load_config, run_pipeline
    from gen_ssd_dagster.store import Store

    run_config, overrides = load_config(args.config)
    if args.partition == "demo":
        run_config = tour.with_tour_defaults(run_config)
        print(tour.header(run_config), flush=True)
    result = run_pipeline(home, partition=args.partition, run_config=run_config, resource_overrides=overrides)
    cmd_report(args)
    if args.partition == "demo" and home.db_path.exists():
        print(f"\nThe tour's arms (one seed; intervals over the test questions):\n\n{tour.arms_table(result, Store(home.db_path))}")
    return 0 if result.success else 1


UPSTREAM = ["teacher", "base_student", "problems", "benchmarks", "cold_start_student"]


def _run_experiment(args: argparse.Namespace, asset: str, settings: dict) -> int:
    """Materialize one experiment asset (and the cached assets it reads) through Dagster, then report."""
    home = Home.resolve(args.home).export()  # before the definitions load (datasets.yaml)
    from gen_ssd_dagster.pipeline import load_config, run_pipeline

    run_config, overrides = load_config(args.config)
    ops = run_config.setdefault("ops", {})
    config = ops.setdefault(asset, {}).setdefault("config", {})
    for name, value in settings.items():
        if isinstance(value, dict):  # a section (eval:): the flags given replace their fields only
            config.setdefault(name, {}).update({k: v for k, v in value.items() if v is not None})
        elif value is not None:
            config[name] = value
    if args.partition != "demo":
        config.setdefault("dataset", args.partition)
        config.setdefault("benchmark", args.partition)
    result = run_pipeline(home, partition=args.partition, run_config=run_config,
                          resource_overrides=overrides, selection=[*UPSTREAM, asset])
    if result.success:
        print(_experiment_report(home, "comparison" if asset == "method_comparison" else "sweep"))
    return 0 if result.success else 1


def _experiment_report(home, kind: str, store=None) -> str:
    from gen_ssd_dagster.core.experiments.comparison_table import markdown
    from gen_ssd_dagster.store import Store
    from gen_ssd_dagster.store.experiments import experiment_arms, latest_experiment

    store = store or Store(home.db_path)  # one Store: one schema check per command
    name = latest_experiment(store, kind)
    if name is None:
        return ""
    arms = experiment_arms(store, name)
    title = "Method comparison" if kind == "comparison" else "Gen-SSD knob sweep"
    return f"\n{title} ({name}, {len(arms)} arms; plot: {home.plots / (name + '.png')}):\n\n{markdown(arms)}"


def _eval_flags(args: argparse.Namespace) -> dict:
    return {"eval": {"samples": args.eval_samples, "temperature": args.eval_temperature},
            "calibration_quantile": args.calibrate, "threshold_rule": args.threshold_rule}


def cmd_compare(args: argparse.Namespace) -> int:
    """Gen-SSD vs Standard KD vs post-hoc filtering at an equal teacher-token budget, over seeds."""
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    return _run_experiment(args, "method_comparison", {"seeds": seeds, "teacher_token_budget": args.budget,
                                                       **_eval_flags(args)})


def cmd_sweep(args: argparse.Namespace) -> int:
    """Gen-SSD at each value of each --knob, one knob at a time; accuracy and cost per point."""
    from gen_ssd_dagster.core.experiments.sweep import parse_knobs

    knobs = None
    if args.knob:
        parse_knobs(args.knob)  # a typo fails here, before any model loads
        knobs = {name: [v.strip() for v in values.split(",") if v.strip()]
                 for name, _, values in (k.partition("=") for k in args.knob)}
    return _run_experiment(args, "gen_ssd_knob_sweep", {"knobs": knobs, "seed": args.seed,
                                                         "teacher_token_budget": args.budget, **_eval_flags(args)})


def _stored(args: argparse.Namespace):
    """(home, its store), or None after saying that the home has no results yet."""
    from gen_ssd_dagster.store import Home, Store

    home = Home.resolve(args.home)
    store = Store(home.db_path)
    if not home.db_path.exists() and not store.segments.exists():  # trajectories alone live beside the file
        print(f"gen-ssd: no results in {home.root} yet: run `gen-ssd pipeline` first", file=sys.stderr)
        return None
    return home, store


def cmd_report(args: argparse.Namespace) -> int:
    """Print the latest evaluation score of each student on each benchmark, from DuckDB."""
    import json

    from gen_ssd_dagster.store.scores import latest_scores, report

    if (stored := _stored(args)) is None:
        return 1
    home, store = stored
    df = latest_scores(store)
    text, intervals, diffs, majs = report(store, df)
    if getattr(args, "json", False):
        rows = df.assign(created_at=df.created_at.astype(str)).to_dict(orient="records")
        for row in rows:
            ci = intervals.get((row["student"], row["benchmark"]))
            row["interval95"] = ci.as_dict() if ci else None
            k, maj = majs.get((row["student"], row["benchmark"]), (None, None))
            row["maj_at_k"] = {"k": k, **maj.as_dict()} if maj else None
        differences = [{"student": s, "benchmark": b, "minus": "standard_kd", **d.as_dict()} for s, b, d in diffs]
        from gen_ssd_dagster.core.experiments.comparison_table import paired_differences
        from gen_ssd_dagster.store.experiments import experiment_arms, latest_experiment

        arms_of = {kind: experiment_arms(store, kind=kind) for kind in ("comparison", "sweep")}
        # each method minus Standard KD, paired by seed and question (the tables' column, as data)
        paired = {kind: {"experiment": latest_experiment(store, kind), "differences": paired_differences(arms)}
                  for kind, arms in arms_of.items() if arms}
        experiments = {kind: [a.to_dict() for a in arms] for kind, arms in arms_of.items()}
        for arms in experiments.values():
            for arm in arms:
                arm.pop("ppls", None)  # per-trajectory and per-question values: in DuckDB, too long for a report
                arm.pop("graded", None)
        print(json.dumps({"home": str(home.root), "scores": rows, "differences": differences,
                          "experiment_differences": paired, "experiments": experiments}, indent=2, default=str))
    else:
        print(f"Accuracy in % (latest score per student and benchmark; {home.db_path}):\n")
        print(text)
        if not df.empty:
            print(f"\ngrader {', '.join(sorted(set(df.grader_version)))}; MLflow runs: "
                  f"{', '.join(sorted(set(df.mlflow_run_id.dropna())))}")
        for kind in ("comparison", "sweep"):
            text = _experiment_report(home, kind, store)
            if text:
                print(text)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """Which teacher, datasets, config and trajectories made a model; or which models learned from a dataset."""
    from gen_ssd_dagster.store import Home, lineage

    home = Home.resolve(args.home)
    dataset = args.dataset or args.partition
    if args.dataset and args.partition and args.dataset != args.partition:
        raise lineage.LineageError("--dataset and --partition name the same thing (the partition is the dataset)")
    if dataset and (args.model or args.run_id):
        raise lineage.LineageError("ask about a model (--model/--run-id) or a dataset (--dataset), not both")
    if dataset:
        info = lineage.dataset_lineage(home, dataset)
        print(lineage.as_json(info) if args.json else lineage.format_dataset(info))
    else:
        info = lineage.model_lineage(home, args.model, args.version, args.run_id)
        print(lineage.as_json(info) if args.json else lineage.format_model(info))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write one stored work key's trajectories as a Hugging Face dataset folder; list the keys without one."""
    from gen_ssd_dagster.core.engines.prompts import PromptSettings
    from gen_ssd_dagster.core.data.sharding import shard_count
    from gen_ssd_dagster.export import ExportSettings, export_dataset
    from gen_ssd_dagster.export.keys import find_key, listing, stored_keys

    if (stored := _stored(args)) is None:
        return 1
    home, store = stored
    if not args.key:
        print(f"Stored work keys in {home.db_path} (export one: gen-ssd export KEY):\n{listing(stored_keys(store))}")
        return 0
    settings = ExportSettings(prompt=PromptSettings(system_prompt=args.system_prompt, instruction=args.instruction),
                              shards=shard_count())
    result = export_dataset(home, find_key(store, args.key), settings, Path(args.out) if args.out else None)
    print(f"{'wrote' if result.rewritten else 'unchanged:'} {result.path}\n  digest {result.digest}\n  "
          + ", ".join(f"{k} {v}" for k, v in result.counts.items()))
    if args.push_to_hub:
        from gen_ssd_dagster.export.hub import HubTarget, push

        print(f"pushed to {push(result.path, HubTarget(args.push_to_hub, args.token_env), result.digest)}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Serve the trajectory viewer on 127.0.0.1, or write one partition as a self-contained HTML file."""
    from gen_ssd_dagster.store import Home
    from gen_ssd_dagster.viewer import export_partition, serve

    home = Home.resolve(args.home)
    if args.export:
        out = Path(args.out or f"trajectories_{args.export}.html")
        print(f"wrote {export_partition(home, args.export, out)}")
        return 0
    try:
        serve(home, port=args.port, announce=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_store_compact(args: argparse.Namespace) -> int:
    """Compact the trajectory tables now (writers also start this themselves: docs/store.md)."""
    from gen_ssd_dagster.store import Home, Store
    from gen_ssd_dagster.store.snapshot import take

    home = Home.resolve(args.home)
    store = Store(home.db_path)
    before = len(take(store.segments).tail)
    manifest = store.compact(args.min_batches)
    after = take(store.segments)
    if manifest is None and (store.segments / "compacting").exists():
        print(f"gen-ssd: another compaction of {store.segments} is at work; nothing done", file=sys.stderr)
        return 1
    rows = sum(s["rows"].get("trajectories", 0) for s in after.manifest.segments)
    print(f"{store.segments}: {before - len(after.tail)} batches folded in; {len(after.manifest.segments)}"
          f" segments ({rows} trajectories), {len(after.tail)} fresh batches left")
    return 0


class _LazyHelp(argparse.HelpFormatter):
    """Help texts given as functions are read only when help is printed (`_field_help`)."""

    def add_argument(self, action):
        if callable(action.help):
            action = copy.copy(action)
            action.help = action.help()
        super().add_argument(action)


def _field_help(asset: str, field: str, lead: str = ""):
    """The help of a flag that sets `field` of an experiment's run config (`asset`:
    ComparisonRunConfig or SweepRunConfig; "eval.samples" for a field of a section): its
    description and default as the config classes give them, read from the core's dataclasses.
    Imported when help is printed, so `gen-ssd` starts without loading Dagster or torch."""

    def text() -> str:
        from gen_ssd_dagster.run_config import asset_configs

        cls, *path = getattr(asset_configs, asset), *field.split(".")
        for name in path[:-1]:
            cls = cls.model_fields[name].annotation
        info = cls.model_fields[path[-1]]
        value = info.get_default(call_default_factory=True)
        if isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = " ".join(f"{k}={','.join(map(str, v))}" for k, v in value.items())
        return f"{lead}{info.description} (default: {value})".replace("%", "%%")

    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gen-ssd", description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(default_home()), help="state directory (default: $GEN_SSD_HOME or ./.gen_ssd_home)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the library demo end to end and print accuracies")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto", help="where the models run: auto (a GPU if torch sees one), cpu, cuda, cuda:N")
    demo.set_defaults(func=cmd_demo)
    pipeline = sub.add_parser("pipeline", help="materialize the Dagster asset graph in-process and print the scores")
    pipeline.add_argument("--partition", default="demo", help="dataset partition of the trajectory assets (default: demo)")
    pipeline.add_argument("--config", default=os.environ.get("GEN_SSD_CONFIG"),
                          help="YAML: Dagster run config (ops: ...) and resources: {models, data, mlflow} "
                               "(default: $GEN_SSD_CONFIG, which `dagster dev` reads too)")
    pipeline.set_defaults(func=cmd_pipeline)
    config_help = "pipeline YAML (ops: ..., resources: ...), as for `pipeline` (default: $GEN_SSD_CONFIG)"
    # The experiments' flags set fields of their run config; help and defaults are the config's.
    compare = sub.add_parser("compare", formatter_class=_LazyHelp,
                             help="Gen-SSD vs Standard KD vs post-hoc at an equal teacher-token "
                             "budget, over seeds (the method_comparison asset)")
    compare.add_argument("--seeds", help=_field_help("ComparisonRunConfig", "seeds"), metavar="S1,S2,...")
    compare.add_argument("--budget", type=int, help=_field_help("ComparisonRunConfig", "teacher_token_budget"))
    sweep = sub.add_parser("sweep", formatter_class=_LazyHelp,
                           help="Gen-SSD at each value of each knob (the gen_ssd_knob_sweep asset)")
    sweep.add_argument("--knob", action="append", metavar="KNOB=V1,V2,...",
                       help=_field_help("SweepRunConfig", "knobs", "repeatable, e.g. --knob chunk_tokens=8,16,32 "
                                        "--knob num_candidates=2,4; "))
    sweep.add_argument("--seed", type=int, help=_field_help("SweepRunConfig", "seed"))
    sweep.add_argument("--budget", type=int, help=_field_help("SweepRunConfig", "teacher_token_budget"))
    for p, func, asset in ((compare, cmd_compare, "ComparisonRunConfig"), (sweep, cmd_sweep, "SweepRunConfig")):
        p.add_argument("--partition", default="demo", help="dataset: its train side is the pool, its test side the benchmark")
        p.add_argument("--config", default=os.environ.get("GEN_SSD_CONFIG"), help=config_help)
        p.add_argument("--eval-samples", type=int, help=_field_help(asset, "eval.samples"))
        p.add_argument("--eval-temperature", type=float, help=_field_help(asset, "eval.temperature"))
        p.add_argument("--calibrate", type=float, metavar="Q",
                       help="derive Gen-SSD's max_ppl and ppl_ratio from the Q-quantile of the cold-start "
                            "student's PPLs of the teacher's lines (e.g. 0.9; default: as configured)")
        p.add_argument("--threshold-rule", choices=THRESHOLD_RULES,
                       help="how Gen-SSD's max_ppl and ppl_ratio are set: hand (as configured) or a rule that "
                            "reads them from the cold-start student (docs/thresholds.md; default: as configured)")
        p.set_defaults(func=func)
    report = sub.add_parser("report", help="print the evaluation table (student x benchmark) from DuckDB")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=cmd_report)
    lineage = sub.add_parser("lineage", help="which teacher, datasets and config made a model (MLflow + DuckDB), "
                             "or which models learned from a dataset")
    lineage.add_argument("--model", help="registered MLflow model, e.g. gen-ssd-student-gen-ssd (or gen_ssd)")
    lineage.add_argument("--version", help="its version (default: the newest)")
    lineage.add_argument("--run-id", help="the MLflow run that trained the model")
    lineage.add_argument("--dataset", help="reverse: the models that learned from this dataset partition")
    lineage.add_argument("--partition", help="same as --dataset (partitions are datasets)")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.set_defaults(func=cmd_lineage)
    export = sub.add_parser("export", help="write a stored work key's trajectories as a Hugging Face dataset "
                            "(Parquet + card); without KEY, list the stored keys")
    export.add_argument("key", nargs="?", help="a work key id from the listing (a unique prefix will do)")
    export.add_argument("--out", help="the folder (default: <home>/datasets/<dataset>/<method>-<key>)")
    export.add_argument("--system-prompt", help="a system message for `messages` (the student's, if it has one)")
    export.add_argument("--instruction", help="text appended to each question after a blank line (the student's)")
    export.add_argument("--push-to-hub", metavar="USER/NAME", help="also upload to this hub dataset repository")
    export.add_argument("--token-env", default="HF_TOKEN", help="environment variable with the hub token (default: HF_TOKEN)")
    export.set_defaults(func=cmd_export)
    view = sub.add_parser("view", help="browse the home's trajectories in a browser: candidates, PPLs, pruned paths")
    view.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one, printed)")
    view.add_argument("--export", metavar="DATASET", help="write this partition as one HTML file instead of serving")
    view.add_argument("--out", help="the exported file (default: trajectories_<DATASET>.html)")
    view.set_defaults(func=cmd_view)
    store = sub.add_parser("store", help="maintain the home's trajectory store (docs/store.md)")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    compact = store_sub.add_parser("compact", help="fold the fresh trajectory batches into the compacted layer now")
    compact.add_argument("--min-batches", type=int, default=1, help="do nothing below this many fresh batches")
    compact.set_defaults(func=cmd_store_compact)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Its output piped into a reader that stops early (`gen-ssd report | head -1`)
    ends quietly with 141 (128 + SIGPIPE, as a shell tool killed by the signal), not a traceback."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader gone away shows here at the latest, not at interpreter exit
    except BrokenPipeError:
        # The Python docs' recipe (library/signal, "Note on SIGPIPE"): stdout to devnull, so the
        # interpreter's own last flush at exit finds nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _run(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GenSSDError as exc:  # bad input: one clear line, no traceback
        print(f"gen-ssd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
