"""``mllmdf doc``: an experiment CSV documented as a markdown report with the pipeline's own metrics."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import duckdb
import pandas as pd

from defake_pipeline.endpoints.registry import model_table
from defake_pipeline.errors import DefakeError
from defake_pipeline.records import SEED_CSV_COLUMNS, VERDICT_OF_PRED
from defake_pipeline.reporting.render import render_report
from defake_pipeline.warehouse.database import create_metrics
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.metrics_sql import DATASET_SCOPE

SUMMARY_COLUMNS = [
    "experiment_name",
    "dataset",
    "model",
    "prompt",
    "count",
    "output_path",
    "total_images",
    "count_real",
    "count_fake",
    "accuracy",
    "precision",
    "recall",
    "real_accuracy",
    "fake_accuracy",
    "fails",
]


def guess_experiment_setup(name: str, datasets: list[str]) -> tuple[str, str, str, int]:
    """(dataset, model, prompt, count) from a seed-style name ``dataset-count_model_prompt``."""
    dataset = next((d for d in sorted(datasets, key=len, reverse=True) if name.startswith((d + "-", d + "_"))), "")
    rest = name[len(dataset) + 1 :] if dataset else name
    count = 0
    if m := re.match(r"^(\d+)_", rest):
        count, rest = int(m[1]), rest[m.end() :]
    model = next((k for k in sorted(model_table(), key=len, reverse=True) if rest.startswith(k + "_")), "")
    prompt = rest[len(model) + 1 :] if model else rest
    return dataset, model, prompt, count


def _column(frame: pd.DataFrame, name: str, default) -> pd.Series:
    """A column of a CSV that may predate it (the seed's CSVs have only path,label,pred,response)."""
    return frame[name] if name in frame else pd.Series([default] * len(frame), index=frame.index)


def _numeric(frame: pd.DataFrame, name: str, default: float) -> pd.Series:
    return pd.to_numeric(_column(frame, name, default), errors="coerce").fillna(default)


def _experiment_tables(frame: pd.DataFrame, dataset: str, model: str, prompt: str) -> duckdb.DuckDBPyConnection:
    """An in-memory warehouse holding one CSV, so ``doc`` uses the pipeline's own metrics and templates."""
    frame = frame.drop_duplicates("path", keep="last").reset_index(drop=True)
    # A CSV row is one prediction: the join key is the row's own (paths are unique after the
    # de-duplication above), so an image stored at k paths counts k times, not k².
    content = _column(frame, "image_sha256", None).fillna("").astype(str)
    key = pd.Series(
        [hashlib.sha256(f"{p}\0{c}".encode()).hexdigest() for p, c in zip(frame["path"], content, strict=True)],
        index=frame.index,
    )
    pred = _numeric(frame, "pred", -1).astype("int64")
    error = _column(frame, "error", None)
    manifest = pd.DataFrame(
        {
            "dataset": dataset or "csv",
            "path": frame["path"].map(lambda p: str(Path(p).absolute())),
            "rel_path": frame["path"].astype(str),
            "label": frame["label"].astype("int64"),
            "subset": _column(frame, "subset", "default"),
            "sha256": key,
        }
    )
    preds = pd.DataFrame(
        {
            "image_sha256": key,
            "pred": pred,
            "verdict": pred.map(VERDICT_OF_PRED),
            "score": pd.to_numeric(_column(frame, "score", None), errors="coerce"),
            "response": frame["response"].fillna("").astype(str),
            "error": error.where(error.notna(), None),
            "latency_s": _numeric(frame, "latency_s", 0.0),
            "prompt_tokens": _numeric(frame, "prompt_tokens", 0).astype("int64"),
            "completion_tokens": _numeric(frame, "completion_tokens", 0).astype("int64"),
            "cost_usd": _numeric(frame, "cost_usd", 0.0),
            "refused": _column(frame, "refused", False).astype(str).str.lower().eq("true"),
            "model": model or "unknown",
            "prompt": prompt or "unknown",
            "prompt_hash": _column(frame, "prompt_hash", "–").astype(str),
            "created_at": None,
        }
    )
    con = duckdb.connect()
    con.register("manifest_frame", manifest)
    con.register("predictions_frame", preds)
    con.execute("CREATE TABLE image_manifest AS SELECT * FROM manifest_frame")
    con.execute("CREATE TABLE predictions AS SELECT * FROM predictions_frame")
    create_metrics(con)
    return con


def document_experiment(csv_path: Path, markdown_path: Path, dataset_names: list[str]) -> dict:
    """Write the markdown report of one experiment CSV; return the seed's summary row."""
    try:
        frame = pd.read_csv(csv_path, dtype={"path": str, "response": str}, keep_default_na=True)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DefakeError(f"{csv_path}: cannot read CSV ({exc})") from None
    missing = [c for c in SEED_CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise DefakeError(
            f"{csv_path}: not an experiment CSV (missing column {missing[0]!r}; needs path,label,pred,response)"
        )
    if frame.empty:
        raise DefakeError(f"{csv_path}: no predictions yet (header only), nothing to document")
    name = csv_path.stem
    dataset, model, prompt, count = guess_experiment_setup(name, dataset_names)
    with _experiment_tables(frame, dataset, model, prompt) as con:
        metrics = con.execute("SELECT * FROM metrics").df()
        scored = con.execute("SELECT * FROM scored ORDER BY label DESC, path").df()
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(
        render_report(
            metrics,
            scored,
            markdown_path.parent,
            model or name,
            prompt or name,
            csv_name=os.path.relpath(csv_path.absolute(), markdown_path.parent.absolute()),
        ),
        encoding="utf-8",
    )
    m = metrics[metrics["scope"] == DATASET_SCOPE].iloc[0]

    def seed_value(v) -> float:  # the seed's sklearn calls use zero_division=0
        return 0.0 if pd.isna(v) else float(v)

    valid_real = int(m.tp + m.fn)
    return {
        "experiment_name": name,
        "dataset": dataset,
        "model": model,
        "prompt": prompt,
        "count": count,
        "output_path": os.path.relpath(markdown_path),
        "total_images": int(m.n_valid),
        "count_real": valid_real,
        "count_fake": int(m.n_valid) - valid_real,
        "accuracy": seed_value(m.accuracy),
        "precision": seed_value(m.precision),
        "recall": seed_value(m.recall),
        "real_accuracy": seed_value(m.real_accuracy),
        "fake_accuracy": seed_value(m.fake_accuracy),
        "fails": int(m.n_unknown + m.n_error),
    }


def experiment_csvs(layout: HomeLayout) -> list[Path]:
    """Every experiment CSV directly in DEFAKE_HOME (or below it, but not the pipeline's own folders)."""
    skip = {layout.predictions_dir, layout.manifests_dir, layout.reports_dir}
    out = []
    for path in sorted(layout.home.rglob("*.csv")):
        if not any(parent in skip for parent in path.parents):
            out.append(path)
    return out
