"""SVG charts for the reports and the leaderboard, rendered from jinja2 templates: accuracy with
its interval, the ROC curve beside the reliability diagram, and the subset × model heat-map."""

from __future__ import annotations

import base64

import pandas as pd

from defake_pipeline.records import NO_PROMPT
from defake_pipeline.reporting.templating import ENV
from defake_pipeline.reporting.templating import missing as _missing
from defake_pipeline.warehouse.database import query
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.metrics_sql import DATASET_SCOPE, ECE_BINS, RELIABILITY_SQL, ROC_POINTS_SQL, SUBSET_SCOPE

# Series colours (Tableau 10), in the order the series are listed.
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#ff9da6", "#9d755d", "#bab0ac"]
# Cells of the subset matrix with fewer images than this are marked: their accuracy is loose.
MIN_CELL_IMAGES = 20


def series_label(model: str, prompt: str) -> str:
    return f"{model} (baseline)" if prompt == NO_PROMPT else f"{model} × {prompt}"


def svg_data_uri(svg: str) -> str:
    """An SVG inlined as a data URI, for markdown shown where relative paths do not resolve."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def render_accuracy_chart(rows: pd.DataFrame, title: str = "") -> str:
    """Accuracy with its Wilson interval, one bar per model × prompt."""
    bars = [
        {
            "label": series_label(r.model, r.prompt),
            "accuracy": None if _missing(r.accuracy) else float(r.accuracy),
            "low": 0.0 if _missing(r.accuracy_low) else float(r.accuracy_low),
            "high": 0.0 if _missing(r.accuracy_high) else float(r.accuracy_high),
        }
        for r in rows.itertuples(index=False)
    ]
    return ENV.get_template("accuracy.svg.j2").render(rows=bars, title=title)


def render_score_chart(metrics: pd.DataFrame, roc: pd.DataFrame, reliability: pd.DataFrame, title: str = "") -> str:
    """The ROC curve and the reliability diagram of each model × prompt in ``metrics`` (its
    whole-dataset rows on one dataset), from the rows of ``ROC_POINTS_SQL`` and ``RELIABILITY_SQL``."""
    series = []
    for i, m in enumerate(metrics.itertuples(index=False)):
        own = (roc.model == m.model) & (roc.prompt == m.prompt)
        points = [(0.0, 0.0), *zip(roc[own].fpr.astype(float), roc[own].tpr.astype(float), strict=True)]
        bins = reliability[(reliability.model == m.model) & (reliability.prompt == m.prompt)]
        series.append(
            {
                "label": series_label(m.model, m.prompt),
                "color": PALETTE[i % len(PALETTE)],
                "roc": points,
                "eer": None if _missing(m.eer) else float(m.eer),
                "auc": None if _missing(m.auc) else float(m.auc),
                "reliability": bins.to_dict("records"),
            }
        )
    return ENV.get_template("scores.svg.j2").render(series=series, bins=ECE_BINS, title=title)


def accuracy_color(accuracy: float) -> str:
    """Red at 0, near white at 0.5 (chance), blue at 1."""
    stops = [(0.0, (178, 24, 43)), (0.5, (247, 247, 247)), (1.0, (33, 102, 172))]
    (a, ca), (b, cb) = (stops[0], stops[1]) if accuracy <= 0.5 else (stops[1], stops[2])
    t = (accuracy - a) / (b - a)
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb, strict=True))


def subset_matrix(subsets: pd.DataFrame, order: list[tuple[str, str]]) -> tuple[list[str], list[dict]]:
    """Columns (subsets) and rows (model × prompt, in ``order``) of the accuracy matrix, from the
    per-subset metrics rows of one dataset."""
    columns = sorted(set(subsets["subset"].dropna().astype(str)))
    rows = []
    for model, prompt in order:
        group = subsets[(subsets["model"] == model) & (subsets["prompt"] == prompt)]
        by_subset = {str(r.subset): r for r in group.itertuples(index=False)}
        cells = []
        for column in columns:
            r = by_subset.get(column)
            accuracy = None if r is None or _missing(r.accuracy) else float(r.accuracy)
            color = "" if accuracy is None else accuracy_color(accuracy)
            cells.append({"accuracy": accuracy, "n": 0 if r is None else int(r.n_valid), "color": color})
        rows.append({"label": series_label(model, prompt), "model": model, "prompt": prompt, "cells": cells})
    return columns, rows


def render_matrix_chart(columns: list[str], rows: list[dict], title: str = "") -> str:
    return ENV.get_template("matrix.svg.j2").render(columns=columns, rows=rows, title=title, min_n=MIN_CELL_IMAGES)


def report_score_charts(layout: HomeLayout, metrics: pd.DataFrame) -> dict[str, str]:
    """The ROC and reliability chart (SVG) of one model × prompt on each dataset where it has scores."""
    scored = metrics[(metrics["scope"] == DATASET_SCOPE) & (metrics["n_scored"] > 0)]
    if not len(scored):
        return {}
    model, prompt = scored["model"].iloc[0], scored["prompt"].iloc[0]
    where = " WHERE model = ? AND prompt = ?"
    roc = query(layout, f"SELECT * FROM ({ROC_POINTS_SQL}){where} ORDER BY dataset, fpr, tpr", [model, prompt])
    reliability = query(layout, f"SELECT * FROM ({RELIABILITY_SQL}){where} ORDER BY dataset, bin", [model, prompt])
    return {
        str(m.dataset): render_score_chart(
            scored[scored["dataset"] == m.dataset],
            roc[roc["dataset"] == m.dataset],
            reliability[reliability["dataset"] == m.dataset],
            title=str(m.dataset),
        )
        for m in scored.itertuples(index=False)
    }


def leaderboard_charts(layout: HomeLayout, overall: pd.DataFrame, ranked: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Each dataset's figures as SVG text: accuracy, ROC and reliability where runs have scores,
    and the subset matrix where the dataset has subsets. ``overall``: the whole-dataset rows of
    ``ranked`` in leaderboard order."""
    roc = query(layout, ROC_POINTS_SQL + " ORDER BY dataset, model, prompt, fpr, tpr")
    reliability = query(layout, RELIABILITY_SQL + " ORDER BY ALL")
    charts: dict[str, dict[str, str]] = {}
    for dataset, rows in overall.groupby("dataset", sort=True):
        figures = charts[str(dataset)] = {"accuracy": render_accuracy_chart(rows, title=str(dataset))}
        scored = rows[rows["n_scored"] > 0]
        if len(scored):
            own = roc["dataset"] == dataset
            figures["scores"] = render_score_chart(
                scored, roc[own], reliability[reliability["dataset"] == dataset], title=str(dataset)
            )
        subsets = ranked[(ranked["scope"] == SUBSET_SCOPE) & (ranked["dataset"] == dataset)]
        if subsets["subset"].nunique() > 1:
            order = list(zip(rows["model"], rows["prompt"], strict=True))
            figures["matrix"] = render_matrix_chart(*subset_matrix(subsets, order), title=str(dataset))
    for base, (columns, rows) in robustness_tables(overall).items():
        charts[base]["robustness"] = render_robustness_chart(columns, rows, title=base)
    return charts


CLEAN = "none"  # the column of a robustness table for the base dataset's own images


def _severity(slug: str) -> tuple[str, float]:
    """Perturbations of a kind from the mildest: high quality and scale first, small blur first."""
    kind, _, value = slug.partition("-")
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    return kind, number if kind == "blur" else -number


def robustness_tables(overall: pd.DataFrame) -> dict[str, tuple[list[str], list[dict]]]:
    """For each dataset with derived datasets (``<base>~<perturbation>``), its columns (the clean
    images, then each perturbation) and a row per model × prompt, from whole-dataset metrics rows
    in leaderboard order."""
    datasets = [str(d) for d in overall["dataset"].unique()]
    tables = {}
    for base in datasets:
        slugs = sorted((d.partition("~")[2] for d in datasets if d.startswith(f"{base}~")), key=_severity)
        if "~" in base or not slugs:
            continue
        columns = [CLEAN, *slugs]
        keys = [base, *(f"{base}~{s}" for s in slugs)]
        runs = overall[overall["dataset"].isin(keys)]
        rows = []
        for i, ((model, prompt), group) in enumerate(runs.groupby(["model", "prompt"], sort=False)):
            by_dataset = {str(r.dataset): r for r in group.itertuples(index=False)}
            cells: list[dict | None] = []
            for index, key in enumerate(keys):
                r = by_dataset.get(key)
                if r is None or _missing(r.accuracy):
                    cells.append(None)
                    continue
                low, high = float(r.accuracy_low), float(r.accuracy_high)
                cells.append(
                    {"index": index, "accuracy": float(r.accuracy), "low": low, "high": high, "n": int(r.n_valid)}
                )
            rows.append(
                {
                    "label": series_label(model, prompt),
                    "model": model,
                    "prompt": prompt,
                    "cells": cells,
                    "color": PALETTE[i % len(PALETTE)],
                }
            )
        tables[base] = (columns, rows)
    return tables


def render_robustness_chart(columns: list[str], rows: list[dict], title: str = "") -> str:
    series = []
    for row in rows:
        points = [c for c in row["cells"] if c is not None]
        clean = row["cells"][0]
        segments = []
        for kind in dict.fromkeys(c.partition("-")[0] for c in columns[1:]):
            own = [c for c in points if c["index"] > 0 and columns[c["index"]].partition("-")[0] == kind]
            line = ([clean] if clean else []) + own
            if len(line) > 1:
                segments.append([(c["index"], c["accuracy"]) for c in line])
        series.append({**row, "points": points, "segments": segments})
    return ENV.get_template("robustness.svg.j2").render(columns=columns, series=series, title=title)
