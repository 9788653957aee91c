"""Predictions, one partition per model × prompt, each written to its own Parquet file."""

import warnings
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from defake_pipeline.defs.automation import PREDICTIONS_FOLLOW_MANIFEST
from defake_pipeline.defs.manifests import DatasetSelection, image_manifest
from defake_pipeline.defs.partitions import model_prompt_partitions, split_partition_key
from defake_pipeline.defs.resources import DefakeHomeFolder, ModelEndpoint, QualityGate
from defake_pipeline.endpoints.registry import model_by_key
from defake_pipeline.evaluation.partition import PartitionSummary, evaluate_partition_async, evaluate_partitions
from defake_pipeline.prompting.spec import prompt_by_key
from defake_pipeline.settings import load_settings
from defake_pipeline.text import markdown_table
from defake_pipeline.warehouse.gate import GATE_PASSED, PartitionGate, partition_gate
from defake_pipeline.warehouse.parquet import predictions_content_hash, read_manifests

# Dagster's tag for an event's data version (not exported by name; see the observations below).
DATA_VERSION_TAG = "dagster/data_version"

# BackfillPolicy is marked beta in this Dagster release; the warning says nothing to users.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


PARTITIONS_PER_RUN = load_settings().DEFAKE_PARTITIONS_PER_RUN


class PredictionsConfig(DatasetSelection):
    """Which datasets to evaluate (empty: all), an optional spending limit for this run, how
    many of a run's partitions are evaluated at once (``mllmdf materialize -j``), and whether
    journal misses go through the Batch API (``batch``; also ``batch = true`` in a model entry)."""

    max_cost_usd: float | None = None
    partitions_at_once: int = 1
    batch: bool = False


# Not blocking: the gate is enforced on the data (the warehouse's partition_gate table), so a
# failed partition stays out of every ranking while the other partitions still flow on.
_CHECKS = [
    dg.AssetCheckSpec(
        "error_rate_below_threshold",
        asset="predictions",
        description="Share of images with no answer (after retries) stays under QualityGate.max_error_rate.",
    ),
    dg.AssetCheckSpec(
        "unknown_rate_below_threshold",
        asset="predictions",
        description="Share of answers with no verdict stays under QualityGate.max_unknown_rate.",
    ),
]


def _gate_table(gates: dict[str, PartitionGate]) -> dg.MetadataValue:
    rows = []
    for key, gate in gates.items():
        for g in gate.rows.itertuples():
            err = "–" if pd.isna(g.error_rate) else f"{100 * g.error_rate:.1f}%"
            unk = "–" if pd.isna(g.unknown_rate) else f"{100 * g.unknown_rate:.1f}%"
            rows.append([key, g.dataset, g.n_images, err, unk, f"{g.status} {g.reason or ''}".strip()])
    header = ["partition", "dataset", "images", "error rate", "unknown rate", "gate"]
    return dg.MetadataValue.md(markdown_table(header, rows, align="llrrrl"))


def _waiting_table(waiting: dict[str, PartitionSummary]) -> dg.MetadataValue:
    rows = [[key, s.waiting, ", ".join(s.batches) or "sent before"] for key, s in waiting.items()]
    return dg.MetadataValue.md(markdown_table(["partition", "images waiting", "batches"], rows, align="lrl"))


@dg.asset(
    group_name="evaluation",
    partitions_def=model_prompt_partitions,
    deps=[image_manifest],
    kinds={"parquet"},
    check_specs=_CHECKS,
    automation_condition=PREDICTIONS_FOLLOW_MANIFEST,
    # On one machine a backfill of many partitions is one run: one process start, not one per
    # partition. Where runs go to workers, a run per partition lets them spread (settings.py).
    backfill_policy=(
        dg.BackfillPolicy.multi_run(PARTITIONS_PER_RUN) if PARTITIONS_PER_RUN else dg.BackfillPolicy.single_run()
    ),
)
def predictions(
    context: dg.AssetExecutionContext,
    config: PredictionsConfig,
    store: DefakeHomeFolder,
    endpoint: ModelEndpoint,
    quality: QualityGate,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    """Every manifest image asked of one model with one prompt; cached answers cost nothing."""
    layout = store.layout()
    totals = {"n_images": 0, "n_requests": 0, "n_cached": 0, "n_errors": 0, "n_unknown": 0, "cost_usd": 0.0}
    gates: dict[str, PartitionGate] = {}
    versions: dict[str, str] = {}
    waiting: dict[str, PartitionSummary] = {}
    manifests = read_manifests(layout)
    keys = list(context.partition_keys)
    specs = [endpoint.spec(model_by_key(split_partition_key(k)[0])) for k in keys]

    def evaluation(index: int):
        return lambda: evaluate_partition_async(
            layout,
            specs[index],
            prompt_by_key(split_partition_key(keys[index])[1]),
            api_key=endpoint.key(),
            datasets=config.datasets,
            max_cost_usd=config.max_cost_usd,
            on_progress=context.log.info,
            batch=config.batch,
        )

    def done(index: int, summary: PartitionSummary) -> None:
        key = keys[index]
        if summary.waiting:
            # Nothing written: batches_sensor runs the partition again once its batches end.
            waiting[key] = summary
            if summary.path is not None and summary.path.exists():  # its earlier rows stand, unchanged
                versions[key] = predictions_content_hash([summary.path])
            sent = ", ".join(summary.batches) or "batches sent before"
            context.log.info(f"{key}: {summary.waiting} images wait for their batches ({sent})")
            return
        context.log.info(
            f"{key}: {summary.n_images} images: {summary.n_cached} from the journal, {summary.n_requests} new "
            f"answers; {summary.outcomes}"
        )
        if summary.note:
            context.log.warning(f"{key}: {summary.note}")
        assert summary.path is not None
        versions[key] = predictions_content_hash([summary.path])
        for name in totals:
            totals[name] += getattr(summary, name)
        gates[key] = partition_gate(summary.path, manifests, quality.thresholds())
        if gates[key].status != GATE_PASSED:
            context.log.warning(f"{key}: quality gate {gates[key].status}: {gates[key].reason}")

    evaluate_partitions([evaluation(i) for i in range(len(keys))], config.partitions_at_once, done)
    # In key order, whichever finished first.
    gates = {k: gates[k] for k in keys if k in gates}
    versions = {k: versions[k] for k in keys if k in versions}
    failed_error = [f"{k} on {d}" for k, g in gates.items() for d in g.failures("error_rate_over")]
    failed_unknown = [f"{k} on {d}" for k, g in gates.items() for d in g.failures("unknown_rate_over")]
    check_results = [
        dg.AssetCheckResult(
            check_name="error_rate_below_threshold",
            passed=not failed_error,
            metadata={"failed": ", ".join(failed_error) or "none", "threshold": quality.max_error_rate},
        ),
        dg.AssetCheckResult(
            check_name="unknown_rate_below_threshold",
            passed=not failed_unknown,
            metadata={"failed": ", ".join(failed_unknown) or "none", "threshold": quality.max_unknown_rate},
        ),
    ]
    yield dg.MaterializeResult(
        check_results=check_results,
        metadata={
            **totals,
            "cost_usd": dg.MetadataValue.float(round(totals["cost_usd"], 6)),
            "partitions": _gate_table(gates),
            **({"waiting_for_batches": _waiting_table(waiting)} if waiting else {}),
            "path": dg.MetadataValue.path(str(layout.predictions_dir)),
        },
    )
    # Each partition's data version is a hash of its own rows, so the warehouse rebuilds only
    # when some partition's content changed (defs/automation.py), however many partitions a run
    # covered. A materialization of a partition range can carry only one data version for all
    # of them (dagster-io/dagster#34013); an observation of each partition, recorded after it,
    # is what Dagster's data_version_changed() reads as the partition's latest version.
    for key, version in versions.items():
        summary = gates[key].summary() if key in gates else {"images_waiting_for_batches": waiting[key].waiting}
        yield dg.AssetObservation(
            asset_key=context.asset_key, partition=key, tags={DATA_VERSION_TAG: version}, metadata=summary
        )
