"""Periodic reevaluation: refresh the manifests (predictions, metrics and reports follow) and ask
the drift canaries."""

import dagster as dg

from defake_pipeline.defs.canaries import drift_canaries
from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.errors import SettingsError
from defake_pipeline.settings import load_settings

# Daily at 03:00 by default; set DEFAKE_NIGHTLY_CRON to change it.
NIGHTLY_CRON = load_settings().DEFAKE_NIGHTLY_CRON


def _nightly_request(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Rescan every dataset, and ask each hosted partition's drift canary (defs/canaries.py).
    Where the manifest's content changed, the automation conditions re-ask every model × prompt
    (paying only for images the journal lacks), then rebuild the warehouse, the reports and the
    leaderboard; where nothing changed, the canaries' requests are the only ones."""
    return dg.RunRequest(
        run_key=f"nightly:{context.scheduled_execution_time.isoformat()}",
        asset_selection=[image_manifest.key, drift_canaries.key],
        tags={"defake/trigger": "nightly_reevaluation"},
    )


try:
    nightly_reevaluation = dg.schedule(
        name="nightly_reevaluation",
        cron_schedule=NIGHTLY_CRON,
        target=[image_manifest, drift_canaries],
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )(_nightly_request)
except dg.DagsterInvalidDefinitionError:
    # Dagster's message names its schedule; the user set a variable.
    raise SettingsError(
        f"environment variable DEFAKE_NIGHTLY_CRON: {NIGHTLY_CRON!r} is not a cron expression of 5 fields"
        " (minute hour day month weekday, such as '0 3 * * *')"
    ) from None
