"""A results section: the tables a detection paper reports, in one markdown file that pastes into
a paper, and a CSV per table beside it (``mllmdf paper``). Only runs that passed the quality gate
are in it, as in the leaderboard."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from defake_pipeline.records import NO_PROMPT
from defake_pipeline.reporting.templating import num, pct, signed_pct
from defake_pipeline.storage import StoredPath
from defake_pipeline.text import markdown_table
from defake_pipeline.warehouse.database import query
from defake_pipeline.warehouse.files import write_text_atomic
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.metrics_sql import ECE_BINS

_PASSED = "gate_status = 'passed'"


def _run(alias: str = "") -> str:
    """The model and prompt columns of a table; a baseline's prompt reads "baseline"."""
    return f"{alias}model, CASE WHEN {alias}prompt = '{NO_PROMPT}' THEN 'baseline' ELSE {alias}prompt END AS prompt"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    caption: str
    sql: str
    # Columns shown in the markdown, and how each is written: pct, num or as it is.
    formats: dict[str, str]


TABLES = [
    Table(
        "main",
        "Main results",
        "Accuracy over valid answers with its 95% Wilson interval; real and fake accuracy apart; the "
        "share of answers saying real and its bias (that share minus the share of real images); unknown "
        "and refused answers over the answered images.",
        f"""SELECT dataset, {_run()}, n_images, accuracy, accuracy_low, accuracy_high, balanced_accuracy,
            real_accuracy, fake_accuracy, real_answer_rate, real_answer_bias, unknown_rate, refusal_rate, auc
        FROM metrics WHERE scope = 'dataset' AND {_PASSED} AND dataset NOT LIKE '%~%'
        ORDER BY dataset, accuracy DESC NULLS LAST, model, prompt""",
        {"accuracy": "pct", "balanced_accuracy": "pct", "real_accuracy": "pct", "fake_accuracy": "pct",
         "real_answer_rate": "pct", "real_answer_bias": "signed", "unknown_rate": "pct", "refusal_rate": "pct",
         "auc": "num"},
    ),
    Table(
        "generators",
        "Accuracy per generator",
        "Accuracy per subset (the generator folder, or real images) with the number of valid answers.",
        f"""SELECT dataset, subset, {_run()}, n_valid, accuracy, accuracy_low, accuracy_high
        FROM metrics WHERE scope = 'subset' AND {_PASSED} AND dataset NOT LIKE '%~%'
            AND dataset IN (SELECT dataset FROM metrics WHERE scope = 'subset' GROUP BY dataset
                            HAVING count(DISTINCT subset) > 1)
        ORDER BY dataset, subset, model, prompt""",
        {"accuracy": "pct"},
    ),
    Table(
        "robustness",
        "Robustness",
        "Accuracy on each perturbed copy of a dataset (`<dataset>~<perturbation>`), and its change from "
        "the images as they are.",
        f"""SELECT split_part(p.dataset, '~', 1) AS dataset, split_part(p.dataset, '~', 2) AS perturbation,
            {_run('p.')},
            p.n_valid, p.accuracy, p.accuracy_low, p.accuracy_high, p.accuracy - c.accuracy AS change
        FROM metrics AS p
        JOIN metrics AS c ON c.dataset = split_part(p.dataset, '~', 1) AND (c.model, c.prompt, c.scope)
            = (p.model, p.prompt, 'dataset') AND c.gate_status = 'passed'
        WHERE p.scope = 'dataset' AND p.gate_status = 'passed' AND p.dataset LIKE '%~%'
        ORDER BY 1, 2, p.model, p.prompt""",
        {"accuracy": "pct", "change": "signed"},
    ),
    Table(
        "calibration",
        "Calibration and operating points",
        f"For runs with a score P(fake), fake the positive class: ECE over {ECE_BINS} equal-width bins, "
        "the Brier score, the best TPR at FPR 1% and 5%, and the equal error rate with its threshold.",
        f"""SELECT dataset, {_run()}, n_scored, auc, average_precision, ece, brier, tpr_at_fpr_01, tpr_at_fpr_05,
            eer, eer_threshold
        FROM metrics WHERE scope = 'dataset' AND {_PASSED} AND n_scored > 0
        ORDER BY dataset, model, prompt""",
        {"auc": "num", "average_precision": "num", "ece": "num", "brier": "num", "tpr_at_fpr_01": "pct",
         "tpr_at_fpr_05": "pct", "eer": "pct", "eer_threshold": "num"},
    ),
]  # fmt: skip


# Column headings of the markdown tables (the CSVs keep the warehouse's names).
HEADINGS = {
    "dataset": "Dataset", "model": "Model", "prompt": "Prompt", "subset": "Subset", "perturbation": "Perturbation",
    "n_images": "Images", "n_valid": "Answers", "n_scored": "Scored", "accuracy": "Accuracy (95% CI)",
    "balanced_accuracy": "Balanced", "real_accuracy": "Real acc.", "fake_accuracy": "Fake acc.",
    "real_answer_rate": "Says real", "real_answer_bias": "Bias", "unknown_rate": "Unknown", "refusal_rate": "Refused",
    "auc": "AUC", "average_precision": "AP", "ece": "ECE", "brier": "Brier", "tpr_at_fpr_01": "TPR@FPR 1%",
    "tpr_at_fpr_05": "TPR@FPR 5%", "eer": "EER", "eer_threshold": "EER threshold", "change": "Change",
}  # fmt: skip


def _as_is(value) -> object:
    return "–" if pd.isna(value) else value


def _cells(frame: pd.DataFrame, formats: dict[str, str]) -> tuple[list[str], list[list[object]]]:
    """Columns and rows for the markdown: an interval joins its accuracy, figures are formatted."""
    shown = [c for c in frame.columns if c not in ("accuracy_low", "accuracy_high")]
    rows = []
    for record in frame.to_dict("records"):
        row = []
        for column in shown:
            value = record[column]
            show = {"pct": pct, "num": num, "signed": signed_pct}.get(formats.get(column, ""), _as_is)
            text = show(value)
            if column == "accuracy" and "accuracy_low" in record:
                text = f"{text} ({pct(record['accuracy_low'])}–{pct(record['accuracy_high'])})"
            row.append(text)
        rows.append(row)
    return shown, rows


def write_paper(layout: HomeLayout, target: StoredPath | None = None) -> tuple[StoredPath, list[StoredPath]]:
    """Write the results section and its CSVs; returns the markdown file and the CSVs written.
    A table with no rows (no scores, no subsets, no perturbations) is left out."""
    target = target or layout.reports_dir / "paper.md"
    frames = [(table, query(layout, table.sql)) for table in TABLES]  # nothing is written without a warehouse
    target.parent.mkdir(parents=True, exist_ok=True)
    parts, csvs = ["# Results", ""], {}
    for table, frame in frames:
        if frame.empty:
            continue
        csv = target.with_name(f"{target.stem}_{table.name}.csv")
        csvs[csv] = frame.to_csv(index=False)
        columns, rows = _cells(frame, table.formats)
        align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in columns)
        parts += [
            f"## {table.title}",
            "",
            f"{table.caption} (`{csv.name}`)",
            "",
            markdown_table([HEADINGS.get(c, c) for c in columns], rows, align),
            "",
        ]
    # The markdown first: where it cannot be written (a device, a folder that takes no file),
    # no table is left beside it.
    write_text_atomic(target, "\n".join(parts))
    for csv, text in csvs.items():
        write_text_atomic(csv, text)
    return target, list(csvs)
