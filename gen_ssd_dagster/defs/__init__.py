"""The Dagster layer: every module here defines Dagster objects (assets by area, resources, checks,
the teacher-change automation, the dataset partitions) and `dg.load_from_defs_folder` loads them
all. Thin glue around `gen_ssd_dagster.core`.

May import everything below it: `core`, `store`, `viewer`, `run_config`, `tracking`,
`asset_metadata`, `teacher_chain`; never the entry points that assemble it (`definitions.py`,
`scale_out.py`, `pipeline.py`, `cli.py`) nor Dagster's internals. Nothing outside this folder but
those entry points imports from it.
"""

import warnings

# Model versions are recorded as Dagster data versions on purpose; the parameter is marked beta.
warnings.filterwarnings("ignore", message="Parameter `data_version` of initializer `Output.__init__`")
