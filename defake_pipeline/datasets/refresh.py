"""Manifests rescanned and written under DEFAKE_HOME; manifests of datasets no longer defined removed."""

from __future__ import annotations

from dataclasses import dataclass

from defake_pipeline.datasets.layouts import DatasetSpec
from defake_pipeline.datasets.manifest import (
    build_manifest,
)
from defake_pipeline.storage import StoredPath
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.parquet import (
    read_parquet_frame,
    write_parquet_atomic,
)


@dataclass(frozen=True)
class ManifestSummary:
    dataset: str
    path: StoredPath
    n_images: int
    n_real: int
    n_fake: int
    n_probe_errors: int
    notes: list[str]
    """What the walk skipped: a folder reached twice (a symlink loop), one that cannot be listed."""


def refresh_manifest(layout: HomeLayout, spec: DatasetSpec, progress=None, rehash: bool = False) -> ManifestSummary:
    """Re-scan one dataset and write its manifest, reusing probes of files whose size and mtime
    are unchanged, unless ``rehash``."""
    target = layout.manifest_file(spec.key)
    previous = read_parquet_frame(target) if target.exists() and not rehash else None
    notes: list[str] = []
    manifest = build_manifest(spec, previous, progress=progress, notes=notes, derived_dir=layout.derived_images_dir)
    write_parquet_atomic(manifest, target)
    return ManifestSummary(
        dataset=spec.key,
        path=target,
        n_images=len(manifest),
        n_real=int((manifest["label"] == 1).sum()),
        n_fake=int((manifest["label"] == 0).sum()),
        n_probe_errors=int(manifest["probe_error"].notna().sum()),
        notes=notes,
    )


def prune_manifests(layout: HomeLayout, keep: list[str]) -> list[str]:
    """Delete manifests of datasets no longer defined, so their images leave the warehouse."""
    removed = []
    for file in layout.manifests_dir.glob("*.parquet"):
        if file.stem not in keep:
            file.unlink()
            removed.append(file.stem)
    return removed
