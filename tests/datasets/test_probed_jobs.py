"""Jobs for images without a manifest: probed in order, bad files as probe errors."""

from __future__ import annotations

import hashlib
import threading

from PIL import Image

from defake_pipeline.datasets.layouts import LabeledImage
from defake_pipeline.evaluation.run import probed_jobs
from defake_pipeline.records import job_key


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        Image.effect_noise((64, 48), 20 + i).convert("RGB").save(path, quality=80)
        paths.append(path)
    return paths


def test_jobs_come_in_order_with_their_keys_and_bad_files_as_probe_errors(tmp_path):
    paths = _images(tmp_path, 3000)
    (tmp_path / "text.jpg").write_text("not an image")
    paths.insert(70, tmp_path / "text.jpg")
    jobs: list = []
    runner = threading.Thread(
        target=lambda: jobs.extend(probed_jobs([LabeledImage(p, i % 2, "") for i, p in enumerate(paths)])), daemon=True
    )
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), f"probing hung after {len(jobs)} jobs"
    assert [j.path for j in jobs] == paths
    for job in jobs:
        if job.path.name == "text.jpg":
            assert job.probe_error and "not a readable image" in job.probe_error
        else:
            assert job.probe_error is None
            assert job.key == job_key(hashlib.sha256(job.path.read_bytes()).hexdigest(), str(job.path))
