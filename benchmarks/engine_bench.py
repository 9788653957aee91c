"""Engine benchmark: throughput, client overhead, caching, rate limits, bytes sent and memory.

Starts the local OpenAI-compatible server in a subprocess (so client CPU is the client's)
and prints one JSON object. Run with `make bench`.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from openai import OpenAI
from PIL import Image

from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator
from defake_pipeline.evaluation.journal import ResponseJournal, open_journal
from defake_pipeline.imaging.encode import encode_image_file
from defake_pipeline.prompting.spec import find_prompt, load_prompt
from defake_pipeline.records import ImageJob

LATENCY = 0.2
PROMPT = load_prompt(find_prompt("simple"))


class Server:
    """The project's test server in a subprocess; ``options`` are its command-line flags."""

    def __init__(self, latency: float = 0.0, rpm: int | None = None, *options: str):
        cmd = [sys.executable, "-m", "defake_pipeline.testing.chat_server", "--latency", str(latency), *options]
        if rpm:
            cmd += ["--rpm", str(rpm)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline().split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)) as r:
            return json.loads(r.read() or b"{}")

    def stats(self) -> dict:
        return self._call("/stats")

    def reset(self, **settings) -> None:
        self._call("/reset", settings)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def make_images(folder: Path, n: int, size=(512, 384)) -> list[ImageJob]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        Image.effect_noise(size, 30 + i % 50).convert("RGB").save(path, quality=85)
        jobs.append(ImageJob(path=path, key=hashlib.sha256(path.read_bytes()).hexdigest(), label=i % 2))
    return jobs


def run_engine(server: Server, jobs, journal_path: Path, concurrency: int, journal_url=None, **spec_update):
    spec = get_model("vllm").model_copy(update={"base_url": server.base_url, "concurrency": concurrency, **spec_update})
    journal = open_journal(journal_url) if journal_url else ResponseJournal(journal_path)
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        preds = evaluate_sync(jobs, make_evaluator(spec, PROMPT, journal))
        return preds, time.perf_counter() - started, time.process_time() - cpu
    finally:
        journal.close()


def journal_side_by_side(server: Server, jobs, tmp: Path) -> dict:
    """Throughput at concurrency 64 with the SQLite journal and with the PostgreSQL one (a real
    server on loopback), alternated, each on a fresh journal."""
    from defake_pipeline.testing.postgres import PostgresServer

    walls: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    with PostgresServer("bench") as pg:
        for attempt in range(2):
            for kind in ("sqlite", "postgres"):
                server.reset()
                url = pg.create_database(f"bench{attempt}") if kind == "postgres" else None
                preds, wall, _ = run_engine(server, jobs, tmp / f"side-{kind}-{attempt}.sqlite", 64, journal_url=url)
                assert all(p.error is None for p in preds)
                walls[kind].append(wall)
    rates = {kind: len(jobs) / min(w) for kind, w in walls.items()}
    return {
        "images": len(jobs),
        "latency_s": LATENCY,
        "images_per_s": {kind: round(r, 2) for kind, r in rates.items()},
        "postgres_to_sqlite": round(rates["postgres"] / rates["sqlite"], 3),
    }


def seed_style_sequential(server: Server, jobs) -> float:
    """The seed's loop: a synchronous client, one request after another."""
    client = OpenAI(api_key="x", base_url=server.base_url)
    model = client.models.list().data[0].id
    started = time.perf_counter()
    for job in jobs:
        client.chat.completions.create(
            model=model,
            max_tokens=1000,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Real or generated?"},
                        {"type": "image_url", "image_url": {"url": encode_image_file(job.path)}},
                    ],
                }
            ],
        )
    return len(jobs) / (time.perf_counter() - started)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    out: dict = {"latency_s": LATENCY}
    tmp = Path(tempfile.mkdtemp(prefix="defake-bench-"))
    jobs = make_images(tmp / "imgs", 1920)

    slow = Server(latency=LATENCY)
    try:
        throughput = {}
        # 30 rounds of requests at each concurrency, so start-up is a small share of the run.
        for conc, n in ((1, 30), (16, 480), (64, 1920)):
            slow.reset()
            preds, wall, _ = run_engine(slow, jobs[:n], tmp / f"j-{conc}.sqlite", conc)
            assert all(p.error is None for p in preds)
            ideal = conc / LATENCY
            throughput[str(conc)] = {
                "images_per_s": round(n / wall, 2),
                "ideal": ideal,
                "ratio_to_ideal": round(n / wall / ideal, 3),
            }
        out["throughput"] = throughput
        seq = seed_style_sequential(slow, jobs[:30])
        out["seed_sequential_images_per_s"] = round(seq, 2)
        out["speedup_c64_vs_sequential"] = round(throughput["64"]["images_per_s"] / seq, 1)
        slow.reset()
        run_engine(slow, jobs[:1920], tmp / "j-64.sqlite", 64)
        out["warm_rerun_requests"] = slow.stats()["n_chat"]
        out["journal_c64"] = journal_side_by_side(slow, jobs, tmp)
    finally:
        slow.close()

    fast = Server(latency=0.0)
    try:
        run_engine(fast, jobs[:50], tmp / "warmup.sqlite", 16)  # imports, connections
        _, wall, cpu = run_engine(fast, jobs, tmp / "cpu.sqlite", 16)
        out["client_cpu_ms_per_image"] = round(1000 * cpu / len(jobs), 3)
        out["client_cpu_image_size"] = "512x384 JPEG"

        big = make_images(tmp / "big", 1, size=(4000, 3000))
        for preset in ("gpt4o", "qwen2vl"):
            fast.reset()
            spec_update = {"encoding": get_model(preset).encoding}
            run_engine(fast, big, tmp / f"bytes-{preset}.sqlite", 1, **spec_update)
            out[f"bytes_sent_4000x3000_jpeg_{preset}"] = fast.stats()["bytes_received"]
        out["file_bytes_4000x3000_jpeg"] = big[0].path.stat().st_size

        out["memory_50k"] = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--memory", fast.base_url, str(jobs[0].path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    finally:
        fast.close()

    rpm = 1200
    limited = Server(latency=LATENCY, rpm=rpm)
    try:
        n = 600
        preds, wall, _ = run_engine(
            limited, make_images(tmp / "rpm", n, size=(64, 64)), tmp / "rpm.sqlite", 64, backoff_base_s=0.2
        )
        stats = limited.stats()
        ok_per_min = stats["n_ok"] / wall * 60
        out["rpm_limited"] = {
            "rpm_limit": rpm,
            "images": n,
            "errors": sum(p.error is not None for p in preds),
            "seconds": round(wall, 1),
            "achieved_rpm": round(ok_per_min),
            "share_of_limit": round(ok_per_min / rpm, 3),
            "requests": stats["n_chat"],
            "answered_429": stats["n_429"],
            "share_429": round(stats["n_429"] / stats["n_chat"], 3),
        }
    finally:
        limited.close()
    print(json.dumps(out, indent=2))


def memory_run(base_url: str, image: str, n: int = 50_000) -> dict:
    """Peak memory of one partition run over n images (in its own process, for a clean peak).

    The manifest holds n rows naming the same file under distinct hashes, so every image is a
    new request; predictions stream to Parquet as they arrive.
    """
    import pandas as pd

    from defake_pipeline.datasets.manifest import MANIFEST_COLUMNS
    from defake_pipeline.evaluation.partition import evaluate_partition
    from defake_pipeline.warehouse.layout import HomeLayout
    from defake_pipeline.warehouse.parquet import write_parquet_atomic

    layout = HomeLayout(Path(tempfile.mkdtemp(prefix="defake-mem-")))
    manifest = pd.DataFrame({c: [None] * n for c in MANIFEST_COLUMNS})
    manifest = manifest.assign(
        dataset="mem",
        path=image,
        rel_path="x.jpg",
        label=[i % 2 for i in range(n)],
        subset="default",
        sha256=[f"{i:064x}" for i in range(n)],
    )
    write_parquet_atomic(manifest, layout.manifest_file("mem"))
    manifest_mb = manifest.memory_usage(deep=True).sum() / 2**20
    del manifest
    before = rss_mb()
    spec = get_model("vllm").model_copy(update={"base_url": base_url, "concurrency": 64})
    samples: dict[str, float] = {}
    done = 0

    def sample(_pred) -> None:
        nonlocal done
        done += 1
        if done in (5_000, 25_000, n):
            samples[f"rss_mb_after_{done}"] = round(rss_mb(), 1)

    started = time.perf_counter()
    summary = evaluate_partition(layout, spec, PROMPT, on_result=sample)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images": n,
        "errors": summary.n_errors,
        "seconds": round(time.perf_counter() - started, 1),
        "rss_before_mb": round(before, 1),
        **samples,
        "peak_rss_mb": round(peak, 1),
        "growth_from_5k_to_50k_mb": round(samples[f"rss_mb_after_{n}"] - samples["rss_mb_after_5000"], 1),
        "manifest_frame_mb": round(manifest_mb, 1),
    }


if __name__ == "__main__":
    os.environ.pop("OPENAI_API_KEY", None)
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        print(json.dumps(memory_run(sys.argv[2], sys.argv[3])))
    else:
        main()
