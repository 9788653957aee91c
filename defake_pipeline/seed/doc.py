"""``mllmdf doc``: an experiment CSV documented as a markdown report with the pipeline's own metrics."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict
from pathlib import Path

import duckdb
import pandas as pd

from defake_pipeline.endpoints.registry import model_table
from defake_pipeline.errors import DefakeError
from defake_pipeline.records import (
    MANIFEST_COLUMNS,
    MANIFEST_DTYPES,
    SEED_CSV_COLUMNS,
    VERDICT_OF_PRED,
    ManifestRow,
    Prediction,
    label_from_text,
    predictions_frame,
)
from defake_pipeline.reporting.render import relative_link, render_report
from defake_pipeline.storage import RefusedFile, StoredPath, refuse_special_file, sorted_glob
from defake_pipeline.warehouse.database import create_metrics
from defake_pipeline.warehouse.files import write_text_atomic
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


def _named_by_rows(csv_path: StoredPath, frame: pd.DataFrame, column: str) -> str:
    """The one model (or prompt) the rows of ``mllmdf infer``'s CSVs name; "" where the column is
    absent or empty, as in the seed's CSVs. Rows of several are not one experiment to publish."""
    if column not in frame.columns:
        return ""
    named = sorted(set(frame[column].dropna().astype(str)) - {""})
    if len(named) > 1:
        raise DefakeError(f"{csv_path}: rows of {len(named)} {column}s ({', '.join(named[:3])}); a report is of one")
    return named[0] if named else ""


def _cell(row: dict, name: str, default):
    """A cell of a CSV that may predate its column (the seed's CSVs have only path,label,pred,response)."""
    value = row.get(name)
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _number(row: dict, name: str, default: float) -> float:
    try:
        value = float(_cell(row, name, default))
    except (TypeError, ValueError):
        return default
    return default if math.isnan(value) else value


def _records(row: dict, dataset: str, model: str, prompt: str) -> tuple[ManifestRow, Prediction]:
    """One CSV row as the manifest row and the prediction the pipeline would have stored."""
    # A CSV row is one prediction: the join key is the row's own (paths are unique once
    # de-duplicated), so an image stored at k paths counts k times, not k².
    path = str(row["path"])
    key = hashlib.sha256(f"{path}\0{_cell(row, 'image_sha256', '')}".encode()).hexdigest()
    absolute = str(Path(path).absolute())
    label = label_from_text(row["label"])
    if label is None:
        raise ValueError(f"label {row['label']!r} is not real/fake/1/0 (row of {path})")
    pred = int(_number(row, "pred", -1))
    error = _cell(row, "error", None)
    score = _number(row, "score", math.nan)
    manifest = ManifestRow(
        dataset=dataset or "csv",
        path=absolute,
        rel_path=path,
        label=label,
        subset=str(_cell(row, "subset", "default")),
        sha256=key,
        size_bytes=None,
        mtime_ns=None,
        width=None,
        height=None,
        format=None,
        probe_error=None,
        provenance=None,
    )
    prediction = Prediction(
        image_sha256=key,
        path=absolute,
        label=label,
        verdict=VERDICT_OF_PRED.get(pred, "unknown"),
        pred=pred,
        score=None if math.isnan(score) else score,
        response=str(_cell(row, "response", "")),
        turns=[],
        latency_s=_number(row, "latency_s", 0.0),
        prompt_tokens=int(_number(row, "prompt_tokens", 0)),
        completion_tokens=int(_number(row, "completion_tokens", 0)),
        cost_usd=_number(row, "cost_usd", 0.0),
        n_requests=0,
        refused=str(_cell(row, "refused", False)).lower() == "true",
        error=None if error is None else str(error),
        model=model or "unknown",
        model_id=str(_cell(row, "model_id", model or "unknown")),
        prompt=prompt or "unknown",
        prompt_hash=str(_cell(row, "prompt_hash", "–")),
        created_at=str(_cell(row, "created_at", "")),
    )
    return manifest, prediction


def _experiment_tables(
    csv_path: StoredPath, frame: pd.DataFrame, dataset: str, model: str, prompt: str
) -> duckdb.DuckDBPyConnection:
    """An in-memory warehouse holding one CSV, so ``doc`` uses the pipeline's own metrics and templates."""
    rows = frame.drop_duplicates("path", keep="last").to_dict("records")
    try:
        records = [_records(row, dataset, model, prompt) for row in rows]
    except (TypeError, ValueError) as exc:
        raise DefakeError(f"{csv_path}: {exc}") from None
    manifest = pd.DataFrame([asdict(m) for m, _ in records], columns=MANIFEST_COLUMNS).astype(MANIFEST_DTYPES)
    preds = predictions_frame([p.as_row() for _, p in records])
    con = duckdb.connect()
    con.register("manifest_frame", manifest)
    con.register("predictions_frame", preds)
    con.execute("CREATE TABLE image_manifest AS SELECT * FROM manifest_frame")
    con.execute("CREATE TABLE predictions AS SELECT * FROM predictions_frame")
    create_metrics(con)
    return con


def document_experiment(csv_path: StoredPath, markdown_path: StoredPath, dataset_names: list[str]) -> dict:
    """Write the markdown report of one experiment CSV; return the seed's summary row."""
    try:
        refuse_special_file(csv_path)
        frame = pd.read_csv(str(csv_path), dtype={"path": str, "response": str}, keep_default_na=True)
    except RefusedFile as exc:
        raise DefakeError(f"{csv_path}: {exc}") from None
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
    # The rows say what answered, where they say it; the name is the user's (-o) and a guess.
    model = _named_by_rows(csv_path, frame, "model") or model
    prompt = _named_by_rows(csv_path, frame, "prompt") or prompt
    with _experiment_tables(csv_path, frame, dataset, model, prompt) as con:
        metrics = con.execute("SELECT * FROM metrics").df()
        scored = con.execute("SELECT * FROM scored ORDER BY label DESC, path").df()
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        markdown_path,
        render_report(
            metrics,
            scored,
            markdown_path.parent,
            model or name,
            prompt or name,
            csv_name=relative_link(csv_path, markdown_path.parent),
        ),
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
        "output_path": relative_link(markdown_path, Path.cwd()),
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


def experiment_csvs(layout: HomeLayout) -> list[StoredPath]:
    """Every experiment CSV directly in DEFAKE_HOME (or below it, but not the pipeline's own folders)."""
    skip = {layout.predictions_dir, layout.manifests_dir, layout.reports_dir}
    out: list[StoredPath] = []
    for path in sorted_glob(layout.home, "*.csv", recursive=True):
        if not any(parent in skip for parent in path.parents):
            out.append(path)
    return out
