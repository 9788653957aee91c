"""Dagster entry point: ``defake_pipeline.definitions:defs`` (workspace.yaml, ``dg``).

The definitions are loaded the ``dg`` way, from the modules of ``defake_pipeline/defs/``
(``[tool.dg]`` in pyproject.toml); only the executor is set here, for the whole project.
"""

import dagster as dg

from defake_pipeline.settings import PACKAGE_ROOT

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=PACKAGE_ROOT),
    # Steps run in the run's own process: a fresh process per step costs seconds of imports,
    # and the steps here are short or wait on endpoints (the engine is already concurrent).
    dg.Definitions(executor=dg.in_process_executor),
)
