"""The image manifest: one row per image, with what its bytes say it is.

Rebuilding reuses the previous manifest's probe for any file whose path, size and
modification time are unchanged, so a rescan of unchanged files hashes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict

import pandas as pd

from defake_pipeline.datasets.derived import DerivedImage, derive_images
from defake_pipeline.datasets.layouts import DatasetSpec, LabeledImage, list_images
from defake_pipeline.imaging.probe import ImageProbe, probe_image
from defake_pipeline.records import MANIFEST_COLUMNS, MANIFEST_DTYPES, ImageJob, job_key
from defake_pipeline.storage import StoredPath, relative_parts, size_and_mtime, stored_path
from defake_pipeline.text import is_utf8, printable
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.parquet import read_parquet_frame


def _previous_probes(previous: pd.DataFrame | None) -> dict[tuple[str, int, int], dict]:
    if previous is None or previous.empty:
        return {}
    rows = previous.to_dict("records")
    return {(r["path"], int(r["size_bytes"] or 0), int(r["mtime_ns"] or 0)): r for r in rows if r["sha256"]}


def _rel_path(path: StoredPath, roots: Iterable[StoredPath]) -> str:
    for root in roots:
        try:
            return "/".join(relative_parts(path, root))
        except ValueError:
            continue
    return path.name


def _derived_or_listed(
    spec: DatasetSpec, images: list[LabeledImage], derived_dir: StoredPath | None, previous: pd.DataFrame | None
) -> list[DerivedImage]:
    """The images to probe: a derived dataset's perturbed files, else the files listed."""
    if spec.perturbation is None:
        return [DerivedImage(item, item.path, {}) for item in images]
    if derived_dir is None:
        raise ValueError(f"dataset {spec.key} is derived: its images are made under DEFAKE_HOME")
    return derive_images(spec, images, derived_dir, previous)


def build_manifest(
    spec: DatasetSpec,
    previous: pd.DataFrame | None = None,
    progress=None,
    notes: list[str] | None = None,
    derived_dir: StoredPath | None = None,
) -> pd.DataFrame:
    """Probe every image of a dataset; ``previous`` lets unchanged files skip hashing. What the
    walk skipped goes to ``notes``. A derived dataset's images are made in ``derived_dir``."""
    reuse = _previous_probes(previous)
    roots = spec.path_roots()
    rows = []
    for derived in _derived_or_listed(spec, list_images(spec, notes), derived_dir, previous):
        item = derived.image
        stat = size_and_mtime(item.path)
        old = reuse.get((str(item.path), *stat)) if stat and not derived.error else None
        if old is not None:
            row = {**old, "label": item.label, "subset": item.subset}
        else:
            # A derived image that could not be made is only its error: the source's hash would
            # join the source's own answer to this dataset's name.
            probe: ImageProbe = probe_image(item.path) if not derived.error else ImageProbe(None, None)
            fields = asdict(probe)
            provenance = {**derived.provenance, **fields["provenance"]}
            row = {
                "path": str(item.path),
                "label": item.label,
                "subset": item.subset,
                "sha256": fields["sha256"],
                "size_bytes": fields["size_bytes"],
                "mtime_ns": stat[1] if stat else None,
                "width": fields["width"],
                "height": fields["height"],
                "format": fields["format"],
                "probe_error": derived.error or fields["error"],
                "provenance": json.dumps(provenance, ensure_ascii=False) if provenance else None,
            }
        row["dataset"] = spec.key
        row["rel_path"] = _rel_path(derived.source, roots)
        if not is_utf8(row["path"]):
            # Parquet and DuckDB store UTF-8 only: keep the image listed, with a readable name and an error.
            row = {
                **row,
                "path": printable(row["path"]),
                "rel_path": printable(row["rel_path"]),
                "probe_error": "file name is not valid UTF-8; rename the file",
            }
        rows.append(row)
        if progress:
            progress(1)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype(MANIFEST_DTYPES)


def current_manifest(layout: HomeLayout, spec: DatasetSpec) -> pd.DataFrame:
    """A dataset's manifest as a rescan would find it now, without writing it: only files new
    or changed since the stored one are hashed."""
    stored = layout.manifest_file(spec.key)
    previous = read_parquet_frame(stored) if stored.exists() else None
    return build_manifest(spec, previous, derived_dir=layout.derived_images_dir)


def job_keys(manifest: pd.DataFrame) -> set[str]:
    return {job_key(s, p) for s, p in zip(manifest["sha256"], manifest["path"], strict=True)}


def jobs_from_manifest(manifest: pd.DataFrame) -> Iterator[ImageJob]:
    """One evaluation job per distinct image content (the same bytes are asked about once).

    A generator: jobs are made as the engine takes them, so memory holds the manifest only.
    """
    seen: set[str] = set()
    for row in manifest[["path", "sha256", "label", "probe_error"]].itertuples(index=False):
        key = job_key(row.sha256, row.path)
        if key in seen:
            continue
        seen.add(key)
        yield ImageJob(
            path=stored_path(row.path),
            key=key,
            label=int(row.label),
            probe_error=row.probe_error if isinstance(row.probe_error, str) and row.probe_error else None,
        )


# The columns whose change means the images asked, or what is known of them, changed.
_CONTENT_COLUMNS = ["dataset", "path", "label", "subset", "sha256", "probe_error"]


def manifest_content_hash(manifest: pd.DataFrame) -> str:
    """A hash of what the evaluation depends on: equal for a rescan that found nothing new."""
    rows = manifest[_CONTENT_COLUMNS].sort_values(["dataset", "path"]).reset_index(drop=True)
    digest = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]
