"""Baselines' predictions: a detector run on the pixels reads no prompt, so each registered
baseline is evaluated once per dataset, not once per prompt, and ranked once."""

from collections.abc import Iterator

import dagster as dg

from defake_pipeline.defs.automation import BASELINES_FOLLOW_MANIFEST
from defake_pipeline.defs.manifests import DatasetSelection, image_manifest
from defake_pipeline.defs.resources import DefakeHomeFolder
from defake_pipeline.endpoints.registry import model_by_key, registered_baselines
from defake_pipeline.evaluation.partition import evaluate_partition
from defake_pipeline.records import NO_PROMPT
from defake_pipeline.warehouse.parquet import predictions_content_hash


class BaselinesConfig(DatasetSelection):
    """Which baselines to evaluate (empty: those models.toml registers), and which to take off
    the leaderboard (their files are removed: models.toml no longer registers them)."""

    models: list[str] = []
    remove: list[str] = []


@dg.asset(
    group_name="evaluation", deps=[image_manifest], kinds={"parquet"}, automation_condition=BASELINES_FOLLOW_MANIFEST
)
def baseline_predictions(
    context: dg.AssetExecutionContext, config: BaselinesConfig, store: DefakeHomeFolder
) -> Iterator[dg.MaterializeResult]:
    """Every manifest image judged by each baseline detector (computed here; journaled like answers)."""
    layout = store.layout()
    for key in config.remove:
        layout.predictions_file(key, NO_PROMPT).unlink(missing_ok=True)
    keys = config.models or [spec.key for spec in registered_baselines()]
    files, metadata = [], {}
    for key in keys:
        summary = evaluate_partition(
            layout, model_by_key(key), None, datasets=config.datasets, on_progress=context.log.info
        )
        context.log.info(f"{key}: {summary.n_images} images, {summary.n_cached} from the journal")
        files.append(layout.predictions_file(key, NO_PROMPT))
        metadata[f"{key}/n_images"] = summary.n_images
        metadata[f"{key}/n_requests"] = summary.n_requests
    yield dg.MaterializeResult(
        # The warehouse rebuilds only when this changes (see defs/automation.py).
        data_version=dg.DataVersion(predictions_content_hash(files)),
        metadata={**metadata, "baselines": ", ".join(keys) or "none"},
    )
