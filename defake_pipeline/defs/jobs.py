"""Named jobs, so runs started from the CLI (or the UI's launchpad) say what they are."""

import dagster as dg

from defake_pipeline.defs.baselines import baseline_predictions
from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.metrics import metrics
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.reports import leaderboard, model_reports

refresh_manifests_job = dg.define_asset_job(
    "refresh_manifests", selection=[image_manifest], description="Rescan datasets and rebuild their manifests."
)
evaluate_job = dg.define_asset_job(
    "evaluate",
    selection=[predictions],
    description="Ask one model × prompt partition about every manifest image (cached answers cost nothing).",
)
evaluate_baselines_job = dg.define_asset_job(
    "evaluate_baselines",
    selection=[baseline_predictions],
    description="Run baseline detectors (which read no prompt) on every manifest image, once per dataset.",
)
publish_job = dg.define_asset_job(
    "publish",
    selection=[metrics, model_reports, leaderboard],
    description="Rebuild the warehouse, then the reports and the leaderboard.",
)
