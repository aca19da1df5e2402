"""Gen-SSD: generation-time self-selection distillation, as a plain library and a Dagster pipeline.

What lives where, each part importing only from the parts listed before it:

    core/              the method as a plain library: no Dagster, DuckDB or MLflow import
    store/             a run's home directory and its DuckDB tables (imports core's types)
    generation.py      a method run over problems in committed batches, resuming from the store
                       (imports core and store)
    viewer/            `gen-ssd view`: pages over a home's trajectories (imports core and store)
    export/            a work key's trajectories as a Hugging Face dataset: Parquet, card, digest
                       (imports core and store)
    run_config/        each asset's run config, derived from the core's config dataclasses, and the
                       datasets a run may name (imports core and store)
    tracking/          the MLflow client and the training-run cache (imports core)
    asset_metadata.py  materialization metadata: plots as PNGs, trajectories as markdown (imports core)
    teacher_chain.py   which teacher each link of the chain was made from (reads the Dagster instance)
    instance.py        the Dagster instance inside a home (imports store)
    defs/              the Dagster definitions: assets by area, resources, checks, automation, the
                       dataset partitions (may import everything above)

Over them sit the entry points, the only modules outside defs/ that import from it (a test checks
it): `definitions.py` (the code location), `scale_out.py` (the same with a chosen step executor),
`pipeline.py` (`gen-ssd pipeline`, in-process) and `cli.py` (the `gen-ssd` command).

The library's public API is `gen_ssd_dagster.core.__all__` (`from gen_ssd_dagster.core import
GenSSDConfig, run_method, TrainConfig, fine_tune, ...`); the README's example imports nothing else
(tests/test_public_api.py).
"""
