"""Dagster entry point: ``defake_pipeline.definitions:defs`` (loaded by workspace.yaml)."""

import dagster as dg

from defake_pipeline.defs.jobs import evaluation_jobs
from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.metrics import metrics
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.reports import leaderboard, model_reports
from defake_pipeline.defs.resources import default_resources
from defake_pipeline.defs.schedules import nightly_reevaluation
from defake_pipeline.defs.sensors import new_images_sensor, registry_sensor

defs = dg.Definitions(
    assets=[image_manifest, predictions, metrics, model_reports, leaderboard],
    jobs=evaluation_jobs,
    sensors=[
        new_images_sensor,
        registry_sensor,
        # Evaluates the automation conditions (defs/automation.py): predictions follow new
        # partitions and new manifest content; the warehouse, reports and leaderboard follow.
        dg.AutomationConditionSensorDefinition(
            "automation_sensor",
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=5,
            # Many prediction partitions requested at once become one backfill, which the
            # single-run backfill policy turns into one run.
            emit_backfills=True,
        ),
    ],
    schedules=[nightly_reevaluation],
    resources=default_resources(),
    # Steps run in the run's own process: a fresh process per step costs seconds of imports,
    # and the steps here are short or wait on endpoints (the engine is already concurrent).
    executor=dg.in_process_executor,
)
