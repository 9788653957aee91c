"""Seed-style experiments: ``mllmdf infer`` (sampled images → CSV) and ``mllmdf doc`` (CSV → markdown).

They run on the same engine and journal as the pipeline, so a prediction made here is a
cache hit for the ``predictions`` asset, and the reverse.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pandas as pd

from defake_pipeline.core.datasets import DatasetSpec, LabeledImage, get_dataset
from defake_pipeline.core.engine import ImageJob, Prediction, evaluate_sync, make_evaluator
from defake_pipeline.core.errors import DatasetError, DefakeError
from defake_pipeline.core.images import probe_image
from defake_pipeline.core.journal import ResponseJournal
from defake_pipeline.core.manifest import job_key
from defake_pipeline.core.metrics import DATASET_SCOPE
from defake_pipeline.core.models import ModelSpec, model_table
from defake_pipeline.core.paths import HomeLayout, printable
from defake_pipeline.core.prompts import LoadedPrompt
from defake_pipeline.core.reports import render_report
from defake_pipeline.core.store import PREDICTION_COLUMNS, create_metrics

# The seed's own dataset names, found relative to the working directory.
SEED_DATASET_DIRS = {"WildFakeResampled": "WildFakeResampled", "WildFakeResampled20K": "WildFakeResampled20K"}
SEED_CSV_COLUMNS = ["path", "label", "pred", "response"]
CSV_COLUMNS = SEED_CSV_COLUMNS + [c for c in PREDICTION_COLUMNS if c not in ("path", "label", "pred", "response")]
SUMMARY_COLUMNS = [
    "experiment_name", "dataset", "model", "prompt", "count", "output_path", "total_images", "count_real",
    "count_fake", "accuracy", "precision", "recall", "real_accuracy", "fake_accuracy", "fails",
]  # fmt: skip


def resolve_dataset(dataset: str | None, real_dir: str | None, fake_dir: str | None) -> DatasetSpec:
    """The dataset an ``infer`` call means: --real_dir/--fake_dir, a seed name, a folder, or datasets/."""
    if real_dir or fake_dir or dataset in (None, "", "ImageFolders"):
        if not (real_dir and fake_dir):
            raise DatasetError("give --dataset, or both --real_dir and --fake_dir")
        return DatasetSpec(
            name="ImageFolders", layout="image_folders", real_dir=Path(real_dir).absolute(), fake_dir=Path(fake_dir).absolute()
        )
    if dataset in SEED_DATASET_DIRS:
        return DatasetSpec(name=dataset, layout="real_fake", root=Path(SEED_DATASET_DIRS[dataset]).absolute())
    if Path(dataset).is_dir():
        return DatasetSpec(name=Path(dataset).name, layout="real_fake", root=Path(dataset).absolute())
    return get_dataset(dataset)


def parse_job_split(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not (1 <= int(match[1]) <= int(match[2])):
        raise DefakeError(f"--job_split {text!r}: expected m/n with 1 <= m <= n, such as 1/4")
    return int(match[1]), int(match[2])


def select_samples(
    images: list[LabeledImage],
    count: int,
    seed: int,
    real_only: bool = False,
    fake_only: bool = False,
    job_split: str = "",
) -> list[LabeledImage]:
    """The seed's selection: ``count`` per class at random (0 = all), then the m-th of n slices."""
    if real_only and fake_only:
        raise DefakeError("--real_only and --fake_only exclude each other")
    rng = random.Random(seed)
    picked: list[list[LabeledImage]] = []
    for label in (1, 0):
        pool = [i for i in images if i.label == label]
        picked.append(rng.sample(pool, count) if 0 < count < len(pool) else pool)
    reals, fakes = picked
    reals, fakes = ([] if fake_only else reals), ([] if real_only else fakes)
    if job_split:
        m, n = parse_job_split(job_split)
        reals = reals[len(reals) * (m - 1) // n : len(reals) * m // n]
        fakes = fakes[len(fakes) * (m - 1) // n : len(fakes) * m // n]
    return reals + fakes


def display_path(path: Path) -> str:
    """Paths as the seed wrote them: relative to the working directory where possible."""
    try:
        return printable(str(path.relative_to(Path.cwd())))
    except ValueError:
        return printable(str(path))


def default_output_name(dataset: str, count: int, model: str, prompt_name: str, log_id: str = "") -> str:
    return f"{dataset}-{count}_{model}_{prompt_name}{'_' + log_id if log_id else ''}"


def output_csv_path(layout: HomeLayout, output: str) -> Path:
    """``-o NAME`` → DEFAKE_HOME/NAME.csv; a path with a folder, or ending in .csv, is taken as given."""
    path = Path(output)
    if path.suffix != ".csv":
        path = path.with_name(path.name + ".csv")
    return path if (path.parent != Path(".") or path.is_absolute()) else layout.home / path


def jobs_for(images: list[LabeledImage]) -> Iterator[ImageJob]:
    """Probe each image as the engine takes it, so hashing overlaps with requests in flight."""
    for item in images:
        probe = probe_image(item.path)
        yield ImageJob(path=item.path, sha256=job_key(probe.sha256, str(item.path)), label=item.label, probe_error=probe.error)


def run_experiment(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt,
    images: list[LabeledImage],
    output: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    api_key: str | None = None,
    max_cost_usd: float | None = None,
    on_result: Callable[[Prediction], None] | None = None,
) -> None:
    """Evaluate images and append one CSV row per image the moment its answer arrives."""
    if output.exists() and not (resume or overwrite):
        raise DefakeError(f"{output} already exists; pass --continue to resume it or --overwrite to start again")
    done: set[str] = set()
    if resume and output.exists():
        done = set(pd.read_csv(output, usecols=["path"])["path"].astype(str))
    todo = [i for i in images if display_path(i.path) not in done]
    fresh = not (resume and output.exists())
    journal = ResponseJournal(layout.journal)
    # The file is opened at the first row: a run that fails before any answer (unreachable
    # endpoint, missing decorator) leaves no header-only CSV that a rerun would refuse.
    opened: list = []

    def write(pred: Prediction) -> None:
        if not opened:
            output.parent.mkdir(parents=True, exist_ok=True)
            handle = output.open("w" if fresh else "a", newline="", encoding="utf-8")
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if fresh:
                writer.writeheader()
            opened.extend([handle, writer])
        handle, writer = opened
        writer.writerow({**pred.as_row(), "path": display_path(Path(pred.path))})
        handle.flush()
        if on_result:
            on_result(pred)

    try:
        evaluator = make_evaluator(spec, prompt, journal, api_key, max_cost_usd)
        evaluate_sync(jobs_for(todo), evaluator, on_result=write, collect=False)
    finally:
        journal.close()
        if opened:
            opened[0].close()


# --- doc ---------------------------------------------------------------------------------


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
    manifest = pd.DataFrame({
        "dataset": dataset or "csv", "path": frame["path"].map(lambda p: str(Path(p).absolute())),
        "rel_path": frame["path"].astype(str), "label": frame["label"].astype("int64"),
        "subset": _column(frame, "subset", "default"), "sha256": key,
    })  # fmt: skip
    preds = pd.DataFrame({
        "image_sha256": key, "pred": pred, "verdict": pred.map({1: "real", 0: "fake", -1: "unknown"}),
        "score": pd.to_numeric(_column(frame, "score", None), errors="coerce"),
        "response": frame["response"].fillna("").astype(str), "error": error.where(error.notna(), None),
        "latency_s": _numeric(frame, "latency_s", 0.0), "prompt_tokens": _numeric(frame, "prompt_tokens", 0).astype("int64"),
        "completion_tokens": _numeric(frame, "completion_tokens", 0).astype("int64"),
        "cost_usd": _numeric(frame, "cost_usd", 0.0), "model": model or "unknown", "prompt": prompt or "unknown",
        "prompt_hash": _column(frame, "prompt_hash", "–").astype(str), "created_at": None,
    })  # fmt: skip
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
        raise DefakeError(f"{csv_path}: not an experiment CSV (missing column {missing[0]!r}; needs path,label,pred,response)")
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
            metrics, scored, markdown_path.parent, model or name, prompt or name,
            csv_name=os.path.relpath(csv_path.absolute(), markdown_path.parent.absolute()),
        ),
        encoding="utf-8",
    )
    m = metrics[metrics["scope"] == DATASET_SCOPE].iloc[0]

    def seed_value(v) -> float:  # the seed's sklearn calls use zero_division=0
        return 0.0 if pd.isna(v) else float(v)

    valid_real = int(m.tp + m.fn)
    return {
        "experiment_name": name, "dataset": dataset, "model": model, "prompt": prompt, "count": count,
        "output_path": os.path.relpath(markdown_path), "total_images": int(m.n_valid), "count_real": valid_real,
        "count_fake": int(m.n_valid) - valid_real, "accuracy": seed_value(m.accuracy), "precision": seed_value(m.precision),
        "recall": seed_value(m.recall), "real_accuracy": seed_value(m.real_accuracy),
        "fake_accuracy": seed_value(m.fake_accuracy), "fails": int(m.n_unknown + m.n_error),
    }  # fmt: skip


def experiment_csvs(layout: HomeLayout) -> list[Path]:
    """Every experiment CSV directly in DEFAKE_HOME (or below it, but not the pipeline's own folders)."""
    skip = {layout.predictions_dir, layout.manifests_dir, layout.reports_dir}
    out = []
    for path in sorted(layout.home.rglob("*.csv")):
        if not any(parent in skip for parent in path.parents):
            out.append(path)
    return out
