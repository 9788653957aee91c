"""Plain-Python core of the pipeline. Nothing in this package imports dagster.

The Dagster definitions (``defake_pipeline.defs``) and the CLI (``defake_pipeline.cli``)
are thin shells over the functions here.
"""
