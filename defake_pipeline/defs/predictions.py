"""Predictions, one partition per model × prompt, each written to its own Parquet file."""

import dagster as dg
import pandas as pd

from defake_pipeline.core.pipeline import evaluate_partition
from defake_pipeline.core.prompts import prompt_by_key
from defake_pipeline.defs.manifests import DatasetSelection, image_manifest


class PredictionsConfig(DatasetSelection):
    """Which datasets to evaluate (empty: all), and an optional spending limit for this run."""

    max_cost_usd: float | None = None
from defake_pipeline.defs.partitions import model_prompt_partitions
from defake_pipeline.core.quality import partition_rates
from defake_pipeline.defs.resources import DefakeStore, ModelEndpoint, QualityGate


_CHECKS = [
    dg.AssetCheckSpec("error_rate_below_threshold", asset="predictions", blocking=True,
                      description="Share of images with no answer (after retries) stays under QualityGate.max_error_rate."),
    dg.AssetCheckSpec("unknown_rate_below_threshold", asset="predictions", blocking=True,
                      description="Share of answers with no verdict stays under QualityGate.max_unknown_rate."),
]  # fmt: skip


@dg.asset(
    group_name="evaluation",
    partitions_def=model_prompt_partitions,
    deps=[image_manifest],
    kinds={"parquet"},
    check_specs=_CHECKS,
)
def predictions(
    context: dg.AssetExecutionContext,
    config: PredictionsConfig,
    store: DefakeStore,
    endpoint: ModelEndpoint,
    quality: QualityGate,
) -> dg.MaterializeResult:
    """Every manifest image asked of one model with one prompt; cached answers cost nothing."""
    keys = context.partition_key.keys_by_dimension
    spec = endpoint.spec(keys["model"])
    prompt = prompt_by_key(keys["prompt"])
    summary = evaluate_partition(
        store.layout(), spec, prompt, api_key=endpoint.api_key, datasets=config.datasets, max_cost_usd=config.max_cost_usd
    )
    context.log.info(
        f"{summary.n_images} images: {summary.n_cached} from the journal, {summary.n_requests} new requests; "
        f"{summary.n_errors} errors, "
        f"{summary.n_unknown} unknown"
    )
    rates = partition_rates(pd.read_parquet(summary.path, columns=["error", "pred"]))
    check_results = [
        dg.AssetCheckResult(
            check_name="error_rate_below_threshold", passed=rates.error_rate <= quality.max_error_rate,
            metadata={"error_rate": rates.error_rate, "threshold": quality.max_error_rate},
        ),
        dg.AssetCheckResult(
            check_name="unknown_rate_below_threshold", passed=rates.unknown_rate <= quality.max_unknown_rate,
            metadata={"unknown_rate": rates.unknown_rate, "threshold": quality.max_unknown_rate},
        ),
    ]  # fmt: skip
    return dg.MaterializeResult(
        check_results=check_results,
        metadata={
            "n_images": summary.n_images,
            "n_requests": summary.n_requests,
            "n_cached": summary.n_cached,
            "n_errors": summary.n_errors,
            "n_unknown": summary.n_unknown,
            "accuracy": dg.MetadataValue.float(summary.accuracy) if summary.accuracy is not None else None,
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
            "cost_usd": dg.MetadataValue.float(summary.cost_usd),
            "prompt_hash": prompt.content_hash,
            "path": dg.MetadataValue.path(str(summary.path)),
        }
    )
