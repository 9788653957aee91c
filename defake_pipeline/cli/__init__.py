"""``mllmdf``: the seed's commands (``classify``, ``infer``, ``doc``) and the pipeline's (``materialize``, ``ui``)."""

from defake_pipeline.cli import batches, models, pipeline, seed  # noqa: F401 - registers the commands
from defake_pipeline.cli.app import main

__all__ = ["main"]
