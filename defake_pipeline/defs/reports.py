"""Markdown reports of every model × prompt that passed the gate, and the leaderboard."""

import dagster as dg
import pandas as pd

from defake_pipeline.defs.automation import FOLLOW_WAREHOUSE
from defake_pipeline.defs.metrics import metrics
from defake_pipeline.defs.resources import DefakeHomeFolder
from defake_pipeline.reporting.render import write_leaderboard, write_reports
from defake_pipeline.text import KEY_JOINER
from defake_pipeline.warehouse.database import query

# The UI renders markdown metadata inline; past this size the file on disk is the report. Its
# charts are inlined (about 7 KB each), so a leaderboard of a dozen datasets needs over 100 KB.
_METADATA_MD_LIMIT = 250_000
_NUMERIC = (
    "accuracy",
    "accuracy_strict",
    "precision",
    "recall",
    "f1",
    "balanced_accuracy",
    "auc",
    "unknown_rate",
    "error_rate",
    "cost_usd",
)


def _md_metadata(text: str, path) -> dg.MetadataValue:
    if len(text) > _METADATA_MD_LIMIT:
        # Cut at a line's end: a cut inside an inlined image would show it broken.
        text = text[: text.rfind("\n", 0, _METADATA_MD_LIMIT) + 1] + f"\n_Truncated here; the full report is {path}._\n"
    return dg.MetadataValue.md(text)


@dg.asset(group_name="evaluation", deps=[metrics], kinds={"markdown"}, automation_condition=FOLLOW_WAREHOUSE)
def model_reports(context: dg.AssetExecutionContext, store: DefakeHomeFolder) -> dg.MaterializeResult:
    """One report per model × prompt whose predictions passed the gate: metrics, confusion
    matrix, wrong then correct predictions. Only reports whose rows changed are rendered again."""
    layout = store.layout()
    current, removed = write_reports(layout)
    for gone in removed:
        context.log.info(f"removed {gone.name}: its partition did not pass the gate or left the registry")
    overall = query(layout, "SELECT * FROM metrics WHERE scope = 'dataset' AND gate_status = 'passed'")
    metadata: dict[str, dg.MetadataValue] = {
        "n_rendered": dg.MetadataValue.int(sum(r.rendered for r in current)),
        "n_removed": dg.MetadataValue.int(len(removed)),
        "path": dg.MetadataValue.path(str(layout.reports_dir)),
    }
    # Every current report, rendered now or not: the latest materialization is what the UI shows.
    for report in current:
        metadata[report.path.stem] = _md_metadata(report.ui_markdown, report.path)
    # Numeric entries are what the UI plots over time; one per partition, dataset and figure.
    for _, row in overall.iterrows():
        for k in _NUMERIC:
            if not pd.isna(row[k]):
                name = f"{row['model']}{KEY_JOINER}{row['prompt']}/{row['dataset']}/{k}"
                # Shown as written: four decimals of a share are a hundredth of a percent.
                metadata[name] = dg.MetadataValue.float(round(float(row[k]), 6 if k == "cost_usd" else 4))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(group_name="evaluation", deps=[metrics], kinds={"markdown"}, automation_condition=FOLLOW_WAREHOUSE)
def leaderboard(store: DefakeHomeFolder) -> dg.MaterializeResult:
    """Every model × prompt that passed the gate, ranked per dataset, with accuracy intervals
    and cost; the others are listed apart with the reason."""
    path, _, ui_text = write_leaderboard(store.layout())
    return dg.MaterializeResult(
        metadata={"leaderboard": _md_metadata(ui_text, path), "path": dg.MetadataValue.path(str(path))}
    )
