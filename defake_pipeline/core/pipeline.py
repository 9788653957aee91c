"""The pipeline's steps as plain functions. The Dagster assets and the CLI both call these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from defake_pipeline.core.datasets import DatasetSpec
from defake_pipeline.core.engine import Prediction, evaluate_sync, make_evaluator
from defake_pipeline.core.journal import ResponseJournal
from defake_pipeline.core.manifest import build_manifest, jobs_from_manifest
from defake_pipeline.core.models import ModelSpec
from defake_pipeline.core.paths import HomeLayout
from defake_pipeline.core.prompts import LoadedPrompt
from defake_pipeline.core.store import predictions_frame, read_manifests, write_parquet_atomic


@dataclass(frozen=True)
class ManifestSummary:
    dataset: str
    path: Path
    n_images: int
    n_real: int
    n_fake: int
    n_probe_errors: int


def refresh_manifest(layout: HomeLayout, spec: DatasetSpec, progress=None) -> ManifestSummary:
    """Re-scan one dataset and write its manifest, reusing probes of unchanged files."""
    target = layout.manifest_file(spec.key)
    previous = pd.read_parquet(target) if target.exists() else None
    manifest = build_manifest(spec, previous, progress=progress)
    write_parquet_atomic(manifest, target)
    return ManifestSummary(
        dataset=spec.key,
        path=target,
        n_images=len(manifest),
        n_real=int((manifest["label"] == 1).sum()),
        n_fake=int((manifest["label"] == 0).sum()),
        n_probe_errors=int(manifest["probe_error"].notna().sum()),
    )


def prune_manifests(layout: HomeLayout, keep: list[str]) -> list[str]:
    """Delete manifests of datasets no longer defined, so their images leave the warehouse."""
    removed = []
    for file in layout.manifests_dir.glob("*.parquet"):
        if file.stem not in keep:
            file.unlink()
            removed.append(file.stem)
    return removed


@dataclass(frozen=True)
class PartitionSummary:
    model: str
    prompt: str
    path: Path
    n_images: int
    n_requests: int
    n_errors: int
    n_unknown: int
    accuracy: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def summarize(model: str, prompt: str, path: Path, preds: list[Prediction]) -> PartitionSummary:
    valid = [p for p in preds if p.error is None and p.pred != -1]
    correct = sum(1 for p in valid if p.pred == p.label)
    return PartitionSummary(
        model=model,
        prompt=prompt,
        path=path,
        n_images=len(preds),
        n_requests=sum(p.n_requests for p in preds),
        n_errors=sum(1 for p in preds if p.error is not None),
        n_unknown=sum(1 for p in preds if p.error is None and p.pred == -1),
        accuracy=correct / len(valid) if valid else None,
        prompt_tokens=sum(p.prompt_tokens for p in preds),
        completion_tokens=sum(p.completion_tokens for p in preds),
        cost_usd=sum(p.cost_usd for p in preds),
    )


def evaluate_partition(
    layout: HomeLayout,
    spec: ModelSpec,
    prompt: LoadedPrompt,
    api_key: str | None = None,
    datasets: list[str] | None = None,
    max_cost_usd: float | None = None,
    on_result: Callable[[Prediction], None] | None = None,
) -> PartitionSummary:
    """Evaluate manifest images with one model × prompt and write the partition's Parquet file.

    With ``datasets``, only their images are evaluated; the partition keeps its earlier rows
    for images of other datasets that are still in the manifest.
    """
    manifest = read_manifests(layout)
    chosen = manifest[manifest["dataset"].isin(datasets)] if datasets else manifest
    journal = ResponseJournal(layout.journal)
    try:
        evaluator = make_evaluator(spec, prompt, journal, api_key, max_cost_usd)
        preds = evaluate_sync(jobs_from_manifest(chosen), evaluator, on_result=on_result)
    finally:
        journal.close()
    rows = [p.as_row() for p in preds]
    target = layout.predictions_file(spec.key, prompt.key)
    if datasets and target.exists():
        fresh = {r["image_sha256"] for r in rows}
        still_listed = set(manifest["sha256"].dropna())
        kept = pd.read_parquet(target)
        kept = kept[~kept["image_sha256"].isin(fresh) & kept["image_sha256"].isin(still_listed)]
        rows = kept.to_dict("records") + rows
    rows.sort(key=lambda r: r["path"])
    write_parquet_atomic(predictions_frame(rows), target)
    return summarize(spec.key, prompt.key, target, preds)
