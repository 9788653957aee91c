"""Markdown reports per model × prompt and the leaderboard, also attached as Dagster metadata."""

import dagster as dg
import pandas as pd

from defake_pipeline.core.reports import write_leaderboard, write_report
from defake_pipeline.core.store import query
from defake_pipeline.defs.metrics import FOLLOW_UPSTREAM, metrics
from defake_pipeline.defs.partitions import model_prompt_partitions
from defake_pipeline.defs.resources import DefakeStore

# The UI renders markdown metadata inline; past this size the file on disk is the report.
_METADATA_MD_LIMIT = 60_000
_NUMERIC = (
    "accuracy", "accuracy_strict", "precision", "recall", "f1", "balanced_accuracy", "auc", "unknown_rate",
    "error_rate", "cost_usd",
)  # fmt: skip


def _md_metadata(text: str, path) -> dg.MetadataValue:
    if len(text) > _METADATA_MD_LIMIT:
        text = text[:_METADATA_MD_LIMIT] + f"\n\n_Truncated here; the full report is {path}._\n"
    return dg.MetadataValue.md(text)


@dg.asset(
    group_name="evaluation",
    partitions_def=model_prompt_partitions,
    deps=[metrics],
    kinds={"markdown"},
    automation_condition=FOLLOW_UPSTREAM,
)
def model_report(context: dg.AssetExecutionContext, store: DefakeStore) -> dg.MaterializeResult:
    """The report of one model × prompt: metrics, confusion matrix, wrong then correct predictions."""
    keys = context.partition_key.keys_by_dimension
    layout = store.layout()
    path, text = write_report(layout, keys["model"], keys["prompt"])
    overall = query(
        layout, "SELECT * FROM metrics WHERE model = ? AND prompt = ? AND subset = 'all'", [keys["model"], keys["prompt"]]
    )
    # Numeric entries are what the UI plots over time; one per dataset and figure.
    numeric = {
        f"{row['dataset']}/{k}": dg.MetadataValue.float(float(row[k]))
        for _, row in overall.iterrows()
        for k in _NUMERIC
        if not pd.isna(row[k])
    }
    return dg.MaterializeResult(
        metadata={"report": _md_metadata(text, path), "path": dg.MetadataValue.path(str(path)), **numeric}
    )


@dg.asset(group_name="evaluation", deps=[metrics], kinds={"markdown"}, automation_condition=FOLLOW_UPSTREAM)
def leaderboard(store: DefakeStore) -> dg.MaterializeResult:
    """Every model × prompt ranked per dataset, with accuracy intervals and cost."""
    path, text = write_leaderboard(store.layout())
    return dg.MaterializeResult(
        metadata={"leaderboard": _md_metadata(text, path), "path": dg.MetadataValue.path(str(path))}
    )
