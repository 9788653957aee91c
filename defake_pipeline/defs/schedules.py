"""Periodic reevaluation: refresh the manifests; predictions, metrics and reports follow."""

import dagster as dg

from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.settings import load_settings

# Daily at 03:00 by default; set DEFAKE_NIGHTLY_CRON to change it.
NIGHTLY_CRON = load_settings().DEFAKE_NIGHTLY_CRON


@dg.schedule(cron_schedule=NIGHTLY_CRON, target=[image_manifest], default_status=dg.DefaultScheduleStatus.RUNNING)
def nightly_reevaluation(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Rescan every dataset. Where the manifest's content changed, the automation conditions
    re-ask every model × prompt (paying only for images the journal lacks), then rebuild the
    warehouse, the reports and the leaderboard; where nothing changed, nothing else runs."""
    return dg.RunRequest(
        run_key=f"nightly:{context.scheduled_execution_time.isoformat()}",
        asset_selection=[image_manifest.key],
        tags={"defake/trigger": "nightly_reevaluation"},
    )
