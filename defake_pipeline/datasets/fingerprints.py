"""Cheap change detection for sensors: folder fingerprints from size + mtime.

A rescan stats files and hashes nothing, so watching 100k unchanged images costs a
directory walk (see ``make bench``). The manifest rebuild likewise reuses the probe of any
file whose path, size and mtime are unchanged.
"""

from __future__ import annotations

import hashlib

from defake_pipeline.datasets.layouts import DatasetSpec, require_regular_csv
from defake_pipeline.datasets.walk import walk_images


def dataset_fingerprint(spec: DatasetSpec) -> str:
    """A hash of every image's path, size and mtime (plus the definition itself): any add,
    change or removal changes it."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    for folder in spec.watched_dirs():
        for line in sorted(f"{f.path}\t{f.size}\t{f.mtime_ns}" for f in walk_images(folder)):
            digest.update(line.encode("utf-8", "surrogateescape"))
            digest.update(b"\n")
    if spec.layout == "csv" and require_regular_csv(spec).exists():
        digest.update(spec.path("csv").read_bytes())
    return digest.hexdigest()[:24]
