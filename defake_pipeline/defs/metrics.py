"""The DuckDB warehouse: manifest, predictions, gate and metrics tables, rebuilt from the Parquet files."""

import dagster as dg

from defake_pipeline.datasets.layouts import dataset_specs
from defake_pipeline.defs.automation import WAREHOUSE_FOLLOWS_INPUTS
from defake_pipeline.defs.baselines import baseline_predictions
from defake_pipeline.defs.manifests import image_manifest
from defake_pipeline.defs.partitions import published_pairs
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.resources import DefakeHomeFolder, QualityGate
from defake_pipeline.reporting.render import frame_to_markdown
from defake_pipeline.warehouse.database import query, rebuild_warehouse
from defake_pipeline.warehouse.parquet import missing_manifest_lines, missing_manifests

# DuckDB allows one writing process per file: every writer of the warehouse shares this pool.
DUCKDB_WRITER_POOL = "duckdb_writer"


@dg.asset(
    group_name="evaluation",
    deps=[image_manifest, predictions, baseline_predictions],
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
    automation_condition=WAREHOUSE_FOLLOWS_INPUTS,
)
def metrics(context: dg.AssetExecutionContext, store: DefakeHomeFolder, quality: QualityGate) -> dg.MaterializeResult:
    """Metrics per dataset × model × prompt × subset, computed in SQL, and each partition's
    gate status (tables image_manifest, predictions, partition_gate, metrics, comparisons)."""
    layout = store.layout()
    counts = rebuild_warehouse(layout, quality.thresholds(), published_pairs(context.instance, layout))
    context.log.info(f"warehouse rebuilt: {counts}")
    preview = query(
        layout,
        "SELECT dataset, model, prompt, gate_status, n_images, n_unknown, n_error, round(accuracy, 4) AS accuracy "
        "FROM metrics WHERE scope = 'dataset' ORDER BY accuracy DESC NULLS LAST LIMIT 50",
    )
    gate = query(layout, "SELECT dataset, model, prompt, status, reason FROM partition_gate WHERE status <> 'passed'")
    for row in gate.itertuples(index=False):
        if "unreadable" in row.reason:
            context.log.warning(f"{row.model}|{row.prompt}: {row.reason}")
    absent = missing_manifests(layout, [spec.key for spec in dataset_specs()])
    for line in missing_manifest_lines(layout, absent):
        context.log.warning(line)
    return dg.MaterializeResult(
        metadata={
            **{f"rows_{table}": n for table, n in counts.items()},
            "preview": dg.MetadataValue.md(frame_to_markdown(preview) if len(preview) else "(no predictions yet)"),
            "not_passed": dg.MetadataValue.md(frame_to_markdown(gate) if len(gate) else "every partition passed"),
            "missing_manifests": ", ".join(absent) or "none",
            "path": dg.MetadataValue.path(str(layout.warehouse)),
        }
    )
