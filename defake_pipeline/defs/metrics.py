"""The DuckDB warehouse: manifest, predictions and metrics tables, rebuilt from the Parquet files."""

import dagster as dg

from defake_pipeline.core.reports import frame_to_markdown
from defake_pipeline.core.store import query, rebuild_warehouse
from defake_pipeline.defs.predictions import predictions
from defake_pipeline.defs.resources import DefakeStore

# DuckDB allows one writing process per file: every writer of the warehouse shares this pool.
DUCKDB_WRITER_POOL = "duckdb_writer"


# Metrics and reports follow the predictions on their own, unless a blocking check failed.
FOLLOW_UPSTREAM = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


@dg.asset(
    group_name="evaluation",
    deps=[predictions],
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
    automation_condition=FOLLOW_UPSTREAM,
)
def metrics(context: dg.AssetExecutionContext, store: DefakeStore) -> dg.MaterializeResult:
    """Metrics per dataset × model × prompt × subset, computed in SQL (tables image_manifest, predictions, metrics)."""
    layout = store.layout()
    counts = rebuild_warehouse(layout)
    context.log.info(f"warehouse rebuilt: {counts}")
    preview = query(
        layout,
        "SELECT dataset, model, prompt, n_images, n_unknown, n_error, round(accuracy, 4) AS accuracy "
        "FROM metrics WHERE subset = 'all' ORDER BY accuracy DESC NULLS LAST LIMIT 50",
    )
    return dg.MaterializeResult(
        metadata={
            **{f"rows_{table}": n for table, n in counts.items()},
            "preview": dg.MetadataValue.md(frame_to_markdown(preview) if len(preview) else "(no predictions yet)"),
            "path": dg.MetadataValue.path(str(layout.warehouse)),
        }
    )
