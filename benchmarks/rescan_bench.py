"""Rescan benchmark: how long noticing "nothing changed" takes for 100,000 image files.

Prints JSON: the sensor's size+mtime fingerprint, a first manifest build (which hashes and
probes every file), and a rebuild over unchanged files (which must hash none).
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

import defake_pipeline.datasets.manifest as manifest_module
from defake_pipeline.datasets.fingerprints import dataset_fingerprint
from defake_pipeline.datasets.layouts import DatasetSpec

N_FILES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
PER_FOLDER = 500


def make_tree(root: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    data = buf.getvalue()
    for i in range(N_FILES):
        label = "real" if i % 2 else "fake"
        folder = root / label / f"gen{(i // PER_FOLDER) % 20}" / f"d{i // PER_FOLDER}"
        if i % PER_FOLDER < 2:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(data + i.to_bytes(4, "little"))  # distinct bytes


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - started, 2)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="defake-rescan-"))
    _, make_s = timed(lambda: make_tree(root))
    spec = DatasetSpec(name="big", layout="real_fake", root=root)
    probes = {"n": 0}
    real_probe = manifest_module.probe_image

    def counting_probe(path):
        probes["n"] += 1
        return real_probe(path)

    manifest_module.probe_image = counting_probe
    fp1, fingerprint_first_s = timed(lambda: dataset_fingerprint(spec))
    fp2, fingerprint_again_s = timed(lambda: dataset_fingerprint(spec))
    first, manifest_first_s = timed(lambda: manifest_module.build_manifest(spec))
    hashed_first = probes["n"]
    probes["n"] = 0
    again, manifest_rescan_s = timed(lambda: manifest_module.build_manifest(spec, previous=first))
    print(
        json.dumps(
            {
                "files": N_FILES,
                "tree_creation_s": make_s,
                "sensor_fingerprint_s": fingerprint_first_s,
                "sensor_fingerprint_again_s": fingerprint_again_s,
                "fingerprint_stable": fp1 == fp2,
                "manifest_first_build_s": manifest_first_s,
                "files_hashed_first_build": hashed_first,
                "manifest_rescan_unchanged_s": manifest_rescan_s,
                "files_hashed_on_rescan": probes["n"],
                "rows_equal": bool(first.drop(columns=["mtime_ns"]).equals(again.drop(columns=["mtime_ns"]))),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
