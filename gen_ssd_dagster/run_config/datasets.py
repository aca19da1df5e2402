"""The datasets a run may name: the built-in datasets plus any declared in a datasets YAML (the
dataset partitions, `defs/partitions.py`, are their names).

A YAML file maps a dataset name to its sides, each a dict that
`core.data.benchmarks.dataset_spec_from_dict` reads, e.g.::

    mymath:
      train: {local_file: /data/mymath/train.jsonl, question_field: problem, answer_format: boxed}
      test:  {local_file: /data/mymath/test.jsonl, question_field: problem, answer_format: boxed}

It is read from $GEN_SSD_DATASETS, else <home>/datasets.yaml, else the package's datasets.yaml.
Adding a dataset there adds a partition the next time the definitions load.

`GEN_SSD_SHARDS` (default 1, core/data/sharding.py) cuts every dataset's trajectories into that many
shards (defs/partitions.py, docs/scale-out.md); like the datasets, it is read when the definitions load.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

from ..core.data import benchmarks as core_data
from ..store import Home

PACKAGE_YAML = Path(__file__).resolve().parent.parent / "datasets.yaml"


def datasets_yaml() -> Path | None:
    for candidate in (os.environ.get("GEN_SSD_DATASETS"), Home.resolve().datasets_yaml, PACKAGE_YAML):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@lru_cache(maxsize=1)
def dataset_specs() -> dict[str, dict]:
    """name -> {side: DatasetSpec}: built-ins first, then the YAML's (which may override them)."""
    specs = {name: dict(sides) for name, sides in core_data.BUILTIN_DATASETS.items()}
    path = datasets_yaml()
    if path is not None:
        declared = yaml.safe_load(path.read_text()) or {}
        for name, sides in declared.items():
            specs[name] = {side: core_data.dataset_spec_from_dict({"name": name, "split": side, **d})
                           for side, d in (sides or {}).items()}
    return specs
