"""The probe worker process: probes in order, bad files as probe errors, and a worker that dies
mid-run costs nothing but its restart."""

from __future__ import annotations

import hashlib
import os
import signal
import threading

from PIL import Image

from defake_pipeline.datasets.layouts import LabeledImage
from defake_pipeline.datasets.probe_worker import ProbeChunk, ProbeWorker
from defake_pipeline.records import job_key
from defake_pipeline.seed.infer import jobs_for


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        Image.effect_noise((64, 48), 20 + i).convert("RGB").save(path, quality=80)
        paths.append(path)
    return paths


def test_jobs_come_in_order_with_their_keys_and_bad_files_as_probe_errors(tmp_path):
    # Enough images for the worker's answers to overflow a pipe if they were left unread
    # while the first ones are probed here (a version that did so hung after 2,309 of these 3,000).
    paths = _images(tmp_path, 3000)
    (tmp_path / "text.jpg").write_text("not an image")
    paths.insert(70, tmp_path / "text.jpg")
    jobs: list = []
    runner = threading.Thread(
        target=lambda: jobs.extend(jobs_for([LabeledImage(p, i % 2, "") for i, p in enumerate(paths)])), daemon=True
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


def test_a_worker_killed_mid_run_is_replaced_and_no_probe_is_lost(tmp_path):
    paths = _images(tmp_path, 40)
    worker = ProbeWorker()
    try:
        first = ProbeChunk(worker, paths[:8])
        first.submit()
        worker.wait(first)
        assert first.probe(0).sha256 is not None and worker.answered
        second = ProbeChunk(worker, paths[8:24])
        second.submit()
        killed = worker.pid()
        os.kill(killed, signal.SIGKILL)  # a decoder crash looks the same from here
        third = ProbeChunk(worker, paths[24:])
        third.submit()
        probes = [c.probe(i) for c in (first, second, third) for i in range(len(c.paths))]
        assert worker.pid() not in (None, killed)  # a new worker answered
    finally:
        worker.close()
    assert [p.sha256 for p in probes] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert all(p.error is None for p in probes)
