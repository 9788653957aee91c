"""The images of a derived dataset: each image of its base, perturbed, stored under DEFAKE_HOME
as ``derived/<perturbation>/<sha256 of the source>.<ext>``.

Named by the source's content, a derived image is made once, whatever folder or dataset the
source is found in, and any run finds it by name. A source whose size and modification time are
those the previous manifest recorded is not even read again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd

from defake_pipeline.datasets.layouts import DatasetSpec, LabeledImage, list_images
from defake_pipeline.imaging.perturb import Perturbation
from defake_pipeline.imaging.probe import read_image_bytes
from defake_pipeline.storage import StoredPath, size_and_mtime
from defake_pipeline.warehouse.files import atomic_path


@dataclass(frozen=True)
class DerivedImage:
    image: LabeledImage  # the perturbed file (the source where it could not be made), label and subset
    source: StoredPath
    provenance: dict
    error: str | None = None


def _known(previous: pd.DataFrame | None) -> dict[tuple, str]:
    """Derived files of the previous manifest by their source's path, size and mtime."""
    known = {}
    for row in [] if previous is None else previous[["path", "provenance"]].itertuples(index=False):
        try:
            made = json.loads(row.provenance) if isinstance(row.provenance, str) else {}
        except ValueError:
            continue
        if "source" in made:
            known[(made["source"], made.get("source_size"), made.get("source_mtime_ns"))] = row.path
    return known


def derive_images(
    spec: DatasetSpec, images: list[LabeledImage], derived_dir: StoredPath, previous: pd.DataFrame | None = None
) -> list[DerivedImage]:
    """Each base image perturbed by ``spec.perturbation``, made now only where not made before.
    A source that cannot be read or perturbed keeps its row, with the reason as its error."""
    assert spec.perturbation is not None
    perturbation = Perturbation.parse(spec.perturbation)
    folder = derived_dir / perturbation.slug
    known = _known(previous)
    out = []
    for item in images:
        stat = size_and_mtime(item.path)
        provenance: dict[str, str | int] = {"perturbation": perturbation.text, "source": str(item.path)}
        if stat:
            provenance |= {"source_size": stat[0], "source_mtime_ns": stat[1]}
        reused = known.get((str(item.path), *stat)) if stat else None
        if reused is not None and (folder / reused.rpartition("/")[2]).exists():
            target = folder / reused.rpartition("/")[2]
            out.append(DerivedImage(LabeledImage(target, item.label, item.subset), item.path, provenance))
            continue
        try:
            data = read_image_bytes(item.path)
            target = folder / f"{hashlib.sha256(data).hexdigest()}{perturbation.suffix}"
            if not target.exists():
                made = perturbation.apply(data)
                with atomic_path(target) as tmp:
                    tmp.write_bytes(made)
        except Exception as exc:  # noqa: BLE001 - one bad image never stops the others (Pillow raises many kinds)
            error = f"cannot make its {perturbation.text} version: {exc}"
            out.append(DerivedImage(item, item.path, provenance, error))
            continue
        out.append(DerivedImage(LabeledImage(target, item.label, item.subset), item.path, provenance))
    return out


def dataset_images(spec: DatasetSpec, derived_dir: StoredPath, notes: list[str] | None = None) -> list[LabeledImage]:
    """Every labelled image of a dataset, a derived one's perturbed. An image whose perturbed copy
    cannot be made is left out, with the reason in ``notes``: its source is not what the name says."""
    images = list_images(spec, notes)
    if spec.perturbation is None:
        return images
    out = []
    for derived in derive_images(spec, images, derived_dir):
        if derived.error is None:
            out.append(derived.image)
        elif notes is not None:
            notes.append(f"{derived.source}: {derived.error}")
    return out
