"""Markdown reports rendered with jinja2: one per model × prompt, and a leaderboard."""

from __future__ import annotations

import html
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pandas as pd

from defake_pipeline.core.metrics import ALL_SUBSETS
from defake_pipeline.core.paths import HomeLayout
from defake_pipeline.core.store import query

TEMPLATES_DIR = Path(__file__).with_name("templates")
# Rows of wrong / correct predictions shown in one report; the CSV holds them all.
MAX_ROWS_PER_SECTION = 1000
LEADERBOARD_SORT = ["accuracy", "balanced_accuracy", "n_valid"]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def pct(value, digits: int = 1) -> str:
    return "–" if _missing(value) else f"{100 * float(value):.{digits}f}%"


def num(value, digits: int = 3) -> str:
    return "–" if _missing(value) else f"{float(value):.{digits}f}"


def usd(value) -> str:
    return "–" if _missing(value) else f"${float(value):.4f}"


def md_cell(value) -> str:
    """Text safe inside one markdown table cell: HTML escaped, pipes escaped, newlines as <br>."""
    if _missing(value):
        return ""
    text = html.escape(str(value), quote=False).replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def md_link_target(path: str) -> str:
    """A relative link target that survives spaces and parentheses in file names."""
    return "<" + path.replace(">", "%3E") + ">"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(pct=pct, num=num, usd=usd, md_cell=md_cell, link=md_link_target)

_VERDICT_WORD = {1: "real", 0: "fake", -1: "unknown"}


def _image_rows(rows: pd.DataFrame, report_dir: Path) -> list[dict]:
    out = []
    for r in rows.itertuples(index=False):
        out.append(
            {
                "name": Path(r.path).name,
                "link": os.path.relpath(r.path, report_dir),
                "dataset": r.dataset,
                "label": _VERDICT_WORD[int(r.label)],
                "pred": "error" if r.is_error else _VERDICT_WORD[int(r.pred)],
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


def render_report(metrics: pd.DataFrame, scored: pd.DataFrame, report_dir: Path, model: str, prompt: str) -> str:
    """Markdown for one model × prompt, from its metrics rows and its scored image rows."""
    overall = metrics[metrics["subset"] == ALL_SUBSETS]
    subsets = metrics[metrics["subset"] != ALL_SUBSETS]
    correct_mask = (~scored["is_error"]) & (scored["pred"] == scored["label"])
    wrong = scored[~correct_mask]
    correct = scored[correct_mask]
    return _env.get_template("report.md.j2").render(
        model=model,
        prompt=prompt,
        prompt_hash=", ".join(sorted(set(metrics["prompt_hash"].dropna()))) or "–",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        datasets=sorted(set(metrics["dataset"])),
        overall=overall.to_dict("records"),
        subsets=subsets.to_dict("records") if subsets["subset"].nunique() > 1 else [],
        confusion={ds: _confusion(scored[scored["dataset"] == ds]) for ds in sorted(set(scored["dataset"]))},
        wrong=_image_rows(wrong.head(MAX_ROWS_PER_SECTION), report_dir),
        correct=_image_rows(correct.head(MAX_ROWS_PER_SECTION), report_dir),
        n_wrong=len(wrong),
        n_correct=len(correct),
        max_rows=MAX_ROWS_PER_SECTION,
    )


def render_leaderboard(metrics: pd.DataFrame, report_links: dict[tuple[str, str], str]) -> str:
    overall = metrics[metrics["subset"] == ALL_SUBSETS].sort_values(
        ["dataset", *LEADERBOARD_SORT], ascending=[True, False, False, False], na_position="last"
    )
    boards = {ds: group.to_dict("records") for ds, group in overall.groupby("dataset", sort=True)}
    return _env.get_template("leaderboard.md.j2").render(
        boards=boards, links=report_links, generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    )


def write_report(layout: HomeLayout, model: str, prompt: str) -> tuple[Path, str]:
    """Render and write the report of one model × prompt from the warehouse."""
    metrics = query(layout, "SELECT * FROM metrics WHERE model = ? AND prompt = ?", [model, prompt])
    scored = query(
        layout,
        "SELECT * FROM scored WHERE model = ? AND prompt = ? ORDER BY dataset, label DESC, path",
        [model, prompt],
    )
    target = layout.report_file(model, prompt)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(metrics, scored, target.parent, model, prompt)
    target.write_text(text, encoding="utf-8")
    return target, text


def write_leaderboard(layout: HomeLayout) -> tuple[Path, str]:
    metrics = query(layout, "SELECT * FROM metrics")
    pairs = metrics[["model", "prompt"]].drop_duplicates().itertuples(index=False)
    links = {(m, p): layout.report_file(m, p).name for m, p in pairs}
    text = render_leaderboard(metrics, links)
    layout.leaderboard_file.parent.mkdir(parents=True, exist_ok=True)
    layout.leaderboard_file.write_text(text, encoding="utf-8")
    return layout.leaderboard_file, text


def report_pairs(layout: HomeLayout) -> list[tuple[str, str]]:
    """Every model × prompt that has predictions in the warehouse."""
    frame = query(layout, "SELECT DISTINCT model, prompt FROM metrics ORDER BY model, prompt")
    return list(frame.itertuples(index=False, name=None))


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A plain markdown table of a small data frame (for previews in metadata and the terminal)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
