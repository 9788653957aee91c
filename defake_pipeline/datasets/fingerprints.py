"""Cheap change detection for sensors: folder fingerprints from size + mtime.

A rescan stats files and hashes nothing, so watching 100k unchanged images costs a
directory walk (see ``make bench``). The manifest rebuild likewise reuses the probe of any
file whose path, size and mtime are unchanged.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from defake_pipeline.datasets.layouts import DatasetSpec
from defake_pipeline.imaging.probe import IMAGE_SUFFIXES


def _walk(folder: Path):
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                stack.append(Path(entry.path))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                try:
                    st = entry.stat()
                except OSError:
                    yield entry.path, -1, -1  # a broken link still counts as a change
                    continue
                yield entry.path, st.st_size, st.st_mtime_ns


def dataset_fingerprint(spec: DatasetSpec) -> str:
    """A hash of every image's path, size and mtime (plus the definition itself): any add,
    change or removal changes it."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    for folder in spec.watched_dirs():
        for line in sorted(f"{p}\t{s}\t{m}" for p, s, m in _walk(folder)):
            digest.update(line.encode("utf-8", "surrogateescape"))
            digest.update(b"\n")
    if spec.layout == "csv" and spec.path("csv").exists():
        digest.update(spec.path("csv").read_bytes())
    return digest.hexdigest()[:24]
