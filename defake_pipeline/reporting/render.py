"""Markdown reports rendered with jinja2: one per model × prompt, and a leaderboard."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from defake_pipeline.evaluation.generations import Generation, current_generation
from defake_pipeline.records import NO_PROMPT, VERDICT_OF_PRED
from defake_pipeline.reporting.charts import (
    CLEAN,
    MIN_CELL_IMAGES,
    leaderboard_charts,
    report_score_charts,
    robustness_tables,
    subset_matrix,
    svg_data_uri,
)
from defake_pipeline.reporting.provenance import SNAPSHOTS_SQL, answer_counts, snapshots_by_run
from defake_pipeline.reporting.templating import ENV, pct
from defake_pipeline.reporting.templating import missing as _missing
from defake_pipeline.reporting.thumbnails import ensure_thumbnails
from defake_pipeline.storage import StoredPath, is_remote
from defake_pipeline.text import KEY_JOINER, markdown_table, visible_controls
from defake_pipeline.warehouse.database import export, query, reading
from defake_pipeline.warehouse.files import write_text_atomic
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.metrics_sql import (
    DATASET_SCOPE,
    ECE_BINS,
    LABEL_LEAKS_SQL,
    REPORT_CSV_SQL,
    REPORT_DIGEST_SQL,
    SUBSET_SCOPE,
)

# Rows of wrong / correct predictions shown in one report; the CSV beside it holds them all.
MAX_ROWS_PER_SECTION = 300
LEADERBOARD_SORT = ["accuracy", "balanced_accuracy", "n_valid"]


def data_uri(path: StoredPath, mime: str) -> str:
    """A file inlined as a data URI, for markdown shown where relative paths do not resolve
    (the Dagster UI's metadata view)."""
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def relative_link(target: str | StoredPath, report_dir: StoredPath) -> str:
    """A link from a report to ``target``: relative where both are on one disk or one store,
    else the target's own address."""
    if not is_remote(report_dir):
        return str(target) if "://" in str(target) else os.path.relpath(str(target), str(report_dir))
    base = str(report_dir).rstrip("/") + "/"
    return str(target).removeprefix(base)


def _image_rows(
    rows: pd.DataFrame, report_dir: StoredPath, thumbs: Mapping[str, StoredPath], embed: bool
) -> list[dict]:
    out = []
    for r in rows.itertuples(index=False):
        thumb_file = thumbs.get(r.sha256)
        thumb = None
        if thumb_file:
            thumb = data_uri(thumb_file, "image/jpeg") if embed else relative_link(thumb_file, report_dir)
        out.append(
            {
                "name": Path(r.path).name,
                "link": None if embed else relative_link(r.path, report_dir),
                "thumb": thumb,
                "dataset": r.dataset,
                "label": VERDICT_OF_PRED[int(r.label)],
                "pred": "error" if r.is_error else VERDICT_OF_PRED[int(r.pred)],
                "score": r.score,
                "response": r.error if r.is_error else r.response,
            }
        )
    return out


def _confusion(rows: pd.DataFrame) -> list[dict]:
    table = []
    for label, name in ((1, "real"), (0, "fake")):
        sub = rows[rows["label"] == label]
        valid = sub[~sub["is_error"]]
        table.append(
            {
                "label": name,
                "real": int((valid["pred"] == 1).sum()),
                "fake": int((valid["pred"] == 0).sum()),
                "unknown": int((valid["pred"] == -1).sum()),
                "error": int(sub["is_error"].sum()),
            }
        )
    return table


def render_report(
    metrics: pd.DataFrame,
    scored: pd.DataFrame,
    report_dir: StoredPath,
    model: str,
    prompt: str,
    csv_name: str | None = None,
    thumbnails: bool = True,
    embed: bool = False,
    max_rows: int = MAX_ROWS_PER_SECTION,
    score_charts: Mapping[str, str] | None = None,
    generation: Generation | None = None,
) -> str:
    """Markdown for one model × prompt, from its metrics rows and its scored image rows
    (``generation``: the partition's current cache generation, once a canary began one).

    Wrong answers (unknowns and errors included) come first, then correct ones; each shows a
    thumbnail linked to the image by a relative path, so the file renders on GitHub. With
    ``embed``, thumbnails are inlined as data URIs and files are not linked (for the UI).
    """
    overall = metrics[metrics["scope"] == DATASET_SCOPE]
    subsets = metrics[metrics["scope"] != DATASET_SCOPE]
    correct_mask = (~scored["is_error"]) & (scored["pred"] == scored["label"])
    wrong = scored[~correct_mask].head(max_rows)
    correct = scored[correct_mask].head(max_rows)
    shown = pd.concat([wrong, correct])
    thumbs = (
        ensure_thumbnails(
            # An image that could not be hashed has no thumbnail: its row shows the error.
            {
                sha: path
                for sha, path in zip(shown["sha256"], shown["path"], strict=True)
                if isinstance(sha, str) and sha
            },
            report_dir / "thumbs",
        )
        if thumbnails and len(shown)
        else {}
    )
    answered = scored[~scored["is_error"]]
    return ENV.get_template("report.md.j2").render(
        model=model,
        prompt=prompt,
        snapshots=answer_counts(answered, "served_model"),
        verdict_formats=answer_counts(answered, "verdict_format"),
        generations=answer_counts(answered, "cache_generation"),
        generation=generation if generation and generation.number else None,
        prompt_hash=", ".join(sorted(set(metrics["prompt_hash"].dropna()))) or "–",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        datasets=sorted(set(metrics["dataset"])),
        overall=overall.to_dict("records"),
        scored_overall=overall[overall["n_scored"] > 0].to_dict("records"),
        score_charts=score_charts or {},
        ece_bins=ECE_BINS,
        subsets=subsets.to_dict("records") if subsets["subset"].nunique() > 1 else [],
        confusion={ds: _confusion(scored[scored["dataset"] == ds]) for ds in sorted(set(scored["dataset"]))},
        wrong=_image_rows(wrong, report_dir, thumbs, embed),
        correct=_image_rows(correct, report_dir, thumbs, embed),
        n_wrong=int((~correct_mask).sum()),
        n_correct=int(correct_mask.sum()),
        max_rows=max_rows,
        csv_name=None if embed else csv_name,
    )


def _sorted_overall(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["scope"] == DATASET_SCOPE].sort_values(
        ["dataset", *LEADERBOARD_SORT], ascending=[True, False, False, False], na_position="last"
    )


def render_leaderboard(
    metrics: pd.DataFrame,
    report_links: dict[tuple[str, str], str],
    comparisons: pd.DataFrame | None = None,
    charts: dict[str, dict[str, str]] | None = None,
    unranked: pd.DataFrame | None = None,
    leaks: dict[str, int] | None = None,
    snapshots: pd.DataFrame | None = None,
) -> str:
    """Ranks the metrics rows given (the caller keeps only partitions that passed the gate);
    ``unranked`` lists the others apart, with the gate's reason. ``charts`` maps a dataset to its
    figures (``accuracy``, ``scores``, ``matrix``) by link."""
    overall = _sorted_overall(metrics)
    boards = {ds: group.to_dict("records") for ds, group in overall.groupby("dataset", sort=True)}
    scored_rows = {ds: [m for m in rows if m["n_scored"] > 0] for ds, rows in boards.items()}
    matrices = {}
    for ds, rows in boards.items():
        subsets = metrics[(metrics["scope"] == SUBSET_SCOPE) & (metrics["dataset"] == ds)]
        if subsets["subset"].nunique() > 1:
            matrices[ds] = subset_matrix(subsets, [(m["model"], m["prompt"]) for m in rows])
    pairs = {}
    if comparisons is not None and len(comparisons):
        for ds, group in comparisons.sort_values("mcnemar_p").groupby("dataset", sort=True):
            pairs[ds] = group.head(20).to_dict("records")
    return ENV.get_template("leaderboard.md.j2").render(
        boards=boards,
        links=report_links,
        pairs=pairs,
        charts=charts or {},
        matrices=matrices,
        robustness=robustness_tables(overall),
        clean=CLEAN,
        scored_rows=scored_rows,
        min_cell_images=MIN_CELL_IMAGES,
        ece_bins=ECE_BINS,
        leaks=leaks or {},
        unranked=[] if unranked is None else unranked.to_dict("records"),
        snapshots={} if snapshots is None else snapshots_by_run(snapshots),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


# Markdown attached to a Dagster materialization: rows per section with inlined thumbnails.
UI_ROWS_PER_SECTION = 6


@dataclass(frozen=True)
class WrittenReport:
    model: str
    prompt: str
    path: StoredPath
    ui_markdown: str  # the same report with inlined thumbnails and fewer rows, for the UI
    rendered: bool = True  # False: unchanged since the last run, read back as it was


def _digests_file(layout: HomeLayout) -> StoredPath:
    return layout.reports_dir / ".inputs.json"


def _rendered_from(digests_file: StoredPath) -> dict[str, str]:
    """What each report was last rendered from. Only a cache: where it is missing or cannot be
    read, every report is rendered again."""
    try:
        old = json.loads(digests_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or not JSON
        return {}
    return old if isinstance(old, dict) else {}


def _ui_file(report: StoredPath) -> StoredPath:
    """Where the UI form of a report is kept, so an unchanged report is shown without rendering."""
    return report.parent / ".ui" / report.name


def passed_partitions(layout: HomeLayout) -> list[tuple[str, str]]:
    rows = query(layout, "SELECT DISTINCT model, prompt FROM partition_gate WHERE status = 'passed' ORDER BY ALL")
    return list(rows.itertuples(index=False, name=None))


def _score_chart_file(report: StoredPath, dataset: str) -> StoredPath:
    """Joined as the report's own name is: no key holds the joiner, so a chart's name belongs to one
    report and one dataset (with a dot, prompt `p` on `v2.d` and `p.v2` on `d` would share one)."""
    return report.with_name(f"{report.stem}{KEY_JOINER}{dataset}.scores.svg")


def write_report(layout: HomeLayout, model: str, prompt: str) -> WrittenReport:
    """Render and write the report of one model × prompt from the warehouse."""
    metrics = query(layout, "SELECT * FROM metrics WHERE model = ? AND prompt = ?", [model, prompt])
    scored = query(
        layout,
        "SELECT * FROM scored WHERE model = ? AND prompt = ? ORDER BY dataset, label DESC, path",
        [model, prompt],
    )
    target = layout.report_file(model, prompt)
    target.parent.mkdir(parents=True, exist_ok=True)
    csv_path = target.with_suffix(".csv")
    export(layout, REPORT_CSV_SQL, csv_path, [model, prompt])
    charts, inlined = {}, {}
    for dataset, svg in report_score_charts(layout, metrics).items():
        chart = _score_chart_file(target, dataset)
        write_text_atomic(chart, svg)
        charts[dataset], inlined[dataset] = chart.name, svg_data_uri(svg)
    generation = current_generation(layout, f"{model}|{prompt}") if prompt != NO_PROMPT else None
    text = render_report(
        metrics,
        scored,
        target.parent,
        model,
        prompt,
        csv_name=csv_path.name,
        score_charts=charts,
        generation=generation,
    )
    write_text_atomic(target, text)
    ui = render_report(metrics, scored, target.parent, model, prompt, embed=True, max_rows=UI_ROWS_PER_SECTION,
                       score_charts=inlined, generation=generation)  # fmt: skip
    _ui_file(target).parent.mkdir(exist_ok=True)
    write_text_atomic(_ui_file(target), ui)
    return WrittenReport(model, prompt, target, ui)


def write_reports(layout: HomeLayout) -> tuple[list[WrittenReport], list[StoredPath]]:
    """Bring the reports in line with the warehouse: one per partition that passed the gate.

    A report is rendered again only when its rows or metrics changed; the report of a
    partition that failed its gate, or left the registry, is removed. Returns every current
    report (``rendered`` says which were rendered now) and the files removed.
    """
    with reading(layout):
        return _write_reports(layout)


def _write_reports(layout: HomeLayout) -> tuple[list[WrittenReport], list[StoredPath]]:
    wanted = passed_partitions(layout)
    digests_file = _digests_file(layout)
    old = _rendered_from(digests_file)
    digests, current = {}, []
    for model, prompt in wanted:
        target = layout.report_file(model, prompt)
        row = query(layout, REPORT_DIGEST_SQL, [model, prompt]).iloc[0]
        digests[target.name] = f"{row['n']}:{row['h']}"
        if old.get(target.name) == digests[target.name] and target.exists() and _ui_file(target).exists():
            ui = _ui_file(target).read_text(encoding="utf-8")
            current.append(WrittenReport(model, prompt, target, ui, rendered=False))
        else:
            current.append(write_report(layout, model, prompt))
    removed: list[StoredPath] = []
    keep = {layout.report_file(m, p).name for m, p in wanted}
    for stale in layout.reports_dir.glob("*__*.md") if layout.reports_dir.exists() else []:
        if stale.name not in keep:
            charts = stale.parent.glob(f"{stale.stem}{KEY_JOINER}*.scores.svg")
            for file in (stale, stale.with_suffix(".csv"), _ui_file(stale), *charts):
                file.unlink(missing_ok=True)
            removed.append(stale)
    layout.reports_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(digests_file, json.dumps(digests, indent=1, sort_keys=True))
    return current, removed


def write_leaderboard(layout: HomeLayout) -> tuple[StoredPath, str, str]:
    """Write the leaderboard; returns its path, its markdown, and the markdown for the UI
    (the charts inlined as data URIs)."""
    with reading(layout):
        return _write_leaderboard(layout)


def _write_leaderboard(layout: HomeLayout) -> tuple[StoredPath, str, str]:
    ranked = query(
        layout,
        "SELECT * FROM metrics WHERE gate_status = 'passed'",
    )
    unranked = query(layout, "SELECT * FROM partition_gate WHERE status <> 'passed' ORDER BY dataset, model, prompt")
    comparisons = query(layout, "SELECT * FROM comparisons")
    leaks = dict(query(layout, LABEL_LEAKS_SQL).itertuples(index=False, name=None))
    snapshots = query(layout, SNAPSHOTS_SQL)
    pairs = ranked[["model", "prompt"]].drop_duplicates().itertuples(index=False)
    links = {(m, p): layout.report_file(m, p).name for m, p in pairs}
    layout.reports_dir.mkdir(parents=True, exist_ok=True)
    charts: dict[str, dict[str, str]] = {}
    inlined: dict[str, dict[str, str]] = {}
    for dataset, figures in leaderboard_charts(layout, _sorted_overall(ranked), ranked).items():
        charts[dataset], inlined[dataset] = {}, {}
        for kind, svg in figures.items():
            chart = layout.reports_dir / f"{kind}_{dataset}.svg"
            write_text_atomic(chart, svg)
            charts[dataset][kind], inlined[dataset][kind] = chart.name, svg_data_uri(svg)
    drawn = {name for figures in charts.values() for name in figures.values()}
    for kind in ("accuracy", "scores", "matrix", "robustness"):  # a figure whose dataset or runs are gone
        for old in layout.reports_dir.glob(f"{kind}_*.svg"):
            if old.name not in drawn and KEY_JOINER not in old.name:  # a report's chart, not the board's
                old.unlink(missing_ok=True)
    text = render_leaderboard(ranked, links, comparisons, charts, unranked, leaks, snapshots)
    ui_text = render_leaderboard(ranked, {}, comparisons, inlined, unranked, leaks, snapshots)
    write_text_atomic(layout.leaderboard_file, text)
    return layout.leaderboard_file, text, ui_text


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A plain markdown table of a small data frame (for previews in metadata and the terminal)."""
    rows = [["" if _missing(v) else v for v in row] for row in frame.itertuples(index=False)]
    return markdown_table([str(c) for c in frame.columns], rows)


def leaderboard_top(layout: HomeLayout, per_dataset: int = 5) -> str:
    """The first places of each dataset's ranking, in plain text for a terminal (the whole
    leaderboard, with its tables and charts, is the file)."""
    ranked = _sorted_overall(query(layout, "SELECT * FROM metrics WHERE gate_status = 'passed'"))
    lines = []
    for dataset, rows in ranked.groupby("dataset", sort=True):
        lines.append(f"{visible_controls(str(dataset))}:")
        for place, r in enumerate(rows.head(per_dataset).itertuples(index=False), start=1):
            who = f"{r.model} (baseline)" if r.prompt == NO_PROMPT else f"{r.model} × {r.prompt}"
            interval = f"({pct(r.accuracy_low)}–{pct(r.accuracy_high)})"
            lines.append(f"  {place}. {visible_controls(who)}: {pct(r.accuracy)} {interval} on {r.n_images} images")
        if len(rows) > per_dataset:
            lines.append(f"  … and {len(rows) - per_dataset} more")
    return "\n".join(lines) or "no model × prompt has passed the quality gate yet"
