"""``mllmdf``: the seed's commands (``classify``, ``infer``, ``doc``) and ``materialize``."""

from defake_pipeline.cli import pipeline, seed  # noqa: F401 - registers the commands
from defake_pipeline.cli.app import main, run

__all__ = ["main", "run"]
