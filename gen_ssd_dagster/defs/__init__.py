"""The Dagster layer: assets by area, resources, checks. Thin glue around `gen_ssd_dagster.core`."""

import warnings

# Model versions are recorded as Dagster data versions on purpose; the parameter is marked beta.
warnings.filterwarnings("ignore", message="Parameter `data_version` of initializer `Output.__init__`")
