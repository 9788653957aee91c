"""Dagster entry point: ``defake_pipeline.definitions:defs`` (loaded by workspace.yaml)."""

import dagster as dg

from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.metrics import metrics
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.reports import leaderboard, model_report
from defake_pipeline.defs.resources import default_resources

defs = dg.Definitions(
    assets=[image_manifest, predictions, metrics, model_report, leaderboard],
    resources=default_resources(),
)
