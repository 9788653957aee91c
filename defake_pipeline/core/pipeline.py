"""The pipeline's steps as plain functions. The Dagster assets and the CLI both call these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from defake_pipeline.core.datasets import DatasetSpec
from defake_pipeline.core.engine import Prediction, evaluate_sync, make_evaluator
from defake_pipeline.core.tally import Tally
from defake_pipeline.core.journal import ResponseJournal
from defake_pipeline.core.manifest import build_manifest, job_keys, jobs_from_manifest
from defake_pipeline.core.models import ModelSpec
from defake_pipeline.core.paths import HomeLayout
from defake_pipeline.core.prompts import LoadedPrompt
from defake_pipeline.core.store import PredictionWriter, read_manifests, unreadable_parquet, write_parquet_atomic


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


@dataclass
class PartitionSummary(Tally):
    """A partition run's totals, and where its predictions were written."""

    model: str = ""
    prompt: str = ""
    path: Path | None = None
    note: str = ""  # something the run did that the user should hear of


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
    target = layout.predictions_file(spec.key, prompt.key)
    if datasets and target.exists() and (why := unreadable_parquet(target)):
        # Its rows for other datasets cannot be kept: every dataset is evaluated again,
        # which the journal answers without a request for everything asked before.
        summary_note = f"{why}: rebuilt for every dataset from the journal"
        datasets = None
    else:
        summary_note = ""
    chosen = manifest[manifest["dataset"].isin(datasets)] if datasets else manifest
    summary = PartitionSummary(model=spec.key, prompt=prompt.key, path=target, note=summary_note)
    writer = PredictionWriter(target)
    journal = ResponseJournal(layout.journal)

    def record(pred: Prediction) -> None:
        writer.add(pred.as_row())
        summary.add(pred)
        if on_result:
            on_result(pred)

    try:
        evaluator = make_evaluator(spec, prompt, journal, api_key, max_cost_usd)
        evaluate_sync(jobs_from_manifest(chosen), evaluator, on_result=record, collect=False)
        if datasets and target.exists():
            # Earlier rows for images of other datasets stay, while those images are still listed.
            # Rows match on the job key, which is also how an unreadable image's `missing:<path>`
            # error row is keyed (it has no sha256 in the manifest).
            fresh, listed = job_keys(chosen), job_keys(manifest)
            kept = pd.read_parquet(target)
            kept = kept[~kept["image_sha256"].isin(fresh) & kept["image_sha256"].isin(listed)]
            writer.add_frame(kept)
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    finally:
        journal.close()
    return summary
