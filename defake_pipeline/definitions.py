"""Dagster entry point: ``defake_pipeline.definitions:defs`` (loaded by workspace.yaml)."""

import dagster as dg

from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.metrics import metrics
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.reports import leaderboard, model_report
from defake_pipeline.defs.resources import default_resources
from defake_pipeline.defs.schedules import nightly_reevaluation
from defake_pipeline.defs.sensors import (
    model_registry_sensor,
    new_images_sensor,
    predictions_after_manifest_sensor,
    prompt_files_sensor,
)

defs = dg.Definitions(
    assets=[image_manifest, predictions, metrics, model_report, leaderboard],
    sensors=[
        new_images_sensor,
        predictions_after_manifest_sensor,
        prompt_files_sensor,
        model_registry_sensor,
        # Evaluates the automation conditions that make metrics and reports follow predictions.
        dg.AutomationConditionSensorDefinition(
            "automation_sensor", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING
        ),
    ],
    schedules=[nightly_reevaluation],
    resources=default_resources(),
)
