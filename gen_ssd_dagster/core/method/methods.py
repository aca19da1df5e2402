"""Every method, once: its config class, the version of its code, how it is written in prose, and
the function that runs it. Everything else that lists methods (the registry, the stored work's
versions, the Dagster assets, the evaluation's students, the comparison's arms) reads this table.

It imports no model code (the store reads versions from it): a method's function is imported when
the method first runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from gen_ssd_dagster.core.method.config import GenSSDConfig, PostHocConfig, StandardKDConfig


@dataclass(frozen=True)
class Method:
    config_class: type[GenSSDConfig | StandardKDConfig | PostHocConfig]
    # The version of the method's code (core/method/versions.py says when to bump it).
    version: str
    label: str  # in prose: "Gen-SSD", "Standard KD", ...
    runner: str  # "<module under core.method>:<function>", imported on first use

    @property
    def name(self) -> str:
        return self.config_class.method

    def run(self, *args, **kwargs):
        """The method's function (`run_gen_ssd`, `run_standard_kd`, ...) called with these arguments."""
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(f"gen_ssd_dagster.core.method.{module}"), function)(*args, **kwargs)


# In the one order used wherever methods are listed (the comparison adds its answer-likelihood
# selection after them).
METHODS: dict[str, Method] = {m.name: m for m in (
    Method(GenSSDConfig, version="1", label="Gen-SSD", runner="selection:run_gen_ssd"),
    Method(StandardKDConfig, version="1", label="Standard KD", runner="baselines:run_standard_kd"),
    Method(PostHocConfig, version="1", label="post-hoc filtering", runner="baselines:run_posthoc"),
)}
