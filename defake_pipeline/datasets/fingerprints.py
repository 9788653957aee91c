"""Cheap change detection for sensors: folder fingerprints from size + mtime.

A rescan stats files and hashes nothing, so watching 100k unchanged images costs a
directory walk (see ``make bench``). The manifest rebuild likewise reuses the probe of any
file whose path, size and mtime are unchanged.
"""

from __future__ import annotations

import hashlib

from defake_pipeline.datasets.layouts import DatasetSpec, images_below, list_images, require_regular_csv
from defake_pipeline.storage import size_and_mtime


def dataset_fingerprint(spec: DatasetSpec) -> str:
    """A hash of every image's path, size and mtime (plus the definition itself, and a CSV's
    labels and subsets): any add, change or removal changes it, and no other file does."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    lines = [f"{f.path}\t{f.size}\t{f.mtime_ns}" for folder in spec.image_dirs() for f in images_below(spec, folder)]
    if spec.layout == "csv" and require_regular_csv(spec).exists():
        lines += [f"{i.path}\t{size_and_mtime(i.path)}\t{i.label}\t{i.subset}" for i in list_images(spec)]
    for line in sorted(lines):
        digest.update(line.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()[:24]
