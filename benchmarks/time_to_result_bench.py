"""Time to result: what a user waits for, end to end. Prints one JSON object.

- ``mllmdf infer`` as a user runs it (process start to exit) at 100, 1,000 and 10,000 images,
  concurrency 16 and 64, 200 ms endpoint latency, and 1,000 images at 1 s and concurrency 64 (a
  hosted model's pace); ideal = N / (concurrency / latency) + one latency. Start-up (process
  start to the first request reaching the server) is reported too.
- A warm rerun of the 10,000 images (every answer from the journal).
- Requests- and tokens-per-minute limits, with OpenAI's rate-limit headers on and off.
- Bytes uploaded for a 4000x3000 JPEG per preset family, and images/s through a 50 Mbit/s uplink.

The local server runs in a subprocess, so the client's CPU is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine_bench import LATENCY, Server, run_engine
from PIL import Image

from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.imaging.encode import encode_image
from defake_pipeline.records import ImageJob

MLLMDF = str(Path(sys.executable).with_name("mllmdf"))


def start_server(*options: str) -> Server:
    """The project's test server at the benchmark's latency, with these command-line options."""
    return Server(LATENCY, None, *options)


def make_dataset(root: Path, n: int, size=(256, 192)) -> Path:
    """n distinct noise JPEGs, half under real/ and half under fake/."""
    for i in range(n):
        folder = root / ("real" if i % 2 == 0 else "fake")
        folder.mkdir(parents=True, exist_ok=True)
        Image.effect_noise(size, 30 + i % 97).convert("RGB").save(folder / f"{i}.jpg", quality=85)
    return root


def run_infer(server: Server, data: Path, home: Path, concurrency: int, *extra: str, latency_s: float) -> dict:
    """One ``mllmdf infer`` process against the server at ``latency_s``: its wall time, CPU time
    and the server's counters."""
    env = {**os.environ, "DEFAKE_HOME": str(home), "BASE_URL": server.base_url}
    env.pop("OPENAI_API_KEY", None)
    cmd = [MLLMDF, "infer", "-m", "vllm", "--real_dir", str(data / "real"), "--fake_dir", str(data / "fake")]
    cmd += ["-c", "0", "--concurrency", str(concurrency), "-o", "ttr", *extra]
    server.reset(latency_s=latency_s)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = server.stats()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    first = stats["first_chat_at"]
    return {"wall": wall, "cpu": cpu, "startup": (first - started) if first else None, **stats}


def time_to_result(server: Server, tmp: Path) -> tuple[list[dict], dict]:
    rows, warm = [], {}
    datasets = {n: make_dataset(tmp / f"d{n}", n) for n in (100, 1000, 10_000)}
    runs = [(n, concurrency, LATENCY) for n in datasets for concurrency in (16, 64)] + [(1000, 64, 1.0)]
    for n, concurrency, latency in runs:
        data = datasets[n]
        home = tmp / f"home-{n}-{concurrency}-{latency}"
        got = run_infer(server, data, home, concurrency, latency_s=latency)
        assert got["n_ok"] == n, got
        ideal = n / (concurrency / latency) + latency
        rows.append(
            {
                "images": n,
                "concurrency": concurrency,
                "latency_s": latency,
                "wall_s": round(got["wall"], 2),
                "ideal_s": round(ideal, 3),
                "ratio": round(ideal / got["wall"], 3),
                "startup_s": round(got["startup"], 2),
                "ratio_from_first_request": round(ideal / (got["wall"] - got["startup"]), 3),
                "images_per_s": round(n / got["wall"], 1),
            }
        )
        if n == 10_000 and concurrency == 64:
            again = run_infer(server, data, home, concurrency, "--overwrite", latency_s=latency)
            assert again["n_chat"] == 0, again
            warm = {
                "images": n,
                "wall_s": round(again["wall"], 2),
                "wall_ms_per_image": round(1000 * again["wall"] / n, 3),
                "client_cpu_ms_per_image": round(1000 * again["cpu"] / n, 3),
                "requests": again["n_chat"],
            }
    return rows, warm


def tiny_jobs(folder: Path, n: int) -> list[ImageJob]:
    """n requests' worth of one 64x64 image under distinct keys (each is a new request)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.jpg"
    Image.effect_noise((64, 64), 40).convert("RGB").save(path, quality=85)
    return [ImageJob(path=path, key=f"{folder.name}{i:060x}", label=i % 2) for i in range(n)]


def rate_limited(tmp: Path) -> dict:
    """RPM and TPM limits, headers on and off. Runs without headers are twice as long: their
    opening round meets the limit once, and that cost is shared over the run."""
    out = {}
    rpm, tpm = 1200, 1_200_000  # 20 requests a second; about 18 of these requests a second
    for kind, limit, option in (("rpm", rpm, "--rpm"), ("tpm", tpm, "--tpm")):
        for headers in (True, False):
            n = 1100 if headers else 2200
            server = start_server(option, str(limit), *(["--ratelimit-headers"] if headers else []))
            try:
                name = f"{kind}_headers_{'on' if headers else 'off'}"
                preds, wall, _ = run_engine(server, tiny_jobs(tmp / name, n), tmp / f"{name}.sqlite", 64)
                stats = server.stats()
                used = stats["n_ok"] if kind == "rpm" else stats["n_tokens"]
                out[name] = {
                    "limit_per_minute": limit,
                    "images": n,
                    "errors": sum(p.error is not None for p in preds),
                    "seconds": round(wall, 1),
                    "achieved_per_minute": round(used / wall * 60),
                    "share_of_limit": round(used / wall * 60 / limit, 3),
                    "requests": stats["n_chat"],
                    "answered_429": stats["n_429"],
                    "share_429": round(stats["n_429"] / stats["n_chat"], 4),
                }
            finally:
                server.close()
    return out


def uplink(tmp: Path) -> dict:
    """Bytes a 4000x3000 JPEG costs per preset family, and images/s through 50 Mbit/s."""
    big = tmp / "big.jpg"
    Image.effect_noise((4000, 3000), 40).convert("RGB").save(big, quality=90)
    data = big.read_bytes()
    families = {"openai_tiles (gpt4o, gpt41, ...)": "gpt4o", "openai_gpt5": "gpt5", "self_hosted": "qwen2vl"}
    out: dict = {"file_bytes": len(data), "per_family": {}}
    for family, preset in families.items():
        encoded = encode_image(data, get_model(preset).encoding_policy)
        out["per_family"][family] = {
            "preset": preset,
            "sent_pixels": f"{encoded.width}x{encoded.height}",
            "base64_bytes": len(encoded.url),
            "share_of_file": round(len(encoded.url) / len(data), 3),
        }
    rate = 50e6 / 8
    server = start_server("--uplink-bytes-per-s", str(rate))
    try:
        speeds = {}
        for label, update in (
            ("original_bytes (before)", {"encoding": "original", "detail": None}),
            ("gpt4o_policy", {"encoding": get_model("gpt4o").encoding, "detail": "high"}),
        ):
            # Runs long enough that the opening is small: before the first byte goes, the first 16
            # images are decoded and resized (about 0.16 s of CPU each for this noise JPEG, on 2 cores).
            n = 8 if label.startswith("original") else 192
            jobs = [ImageJob(path=big, key=f"{len(label)}{i:062x}", label=0) for i in range(n)]
            server.reset()
            preds, wall, _ = run_engine(server, jobs, tmp / f"uplink-{len(label)}.sqlite", 16, **update)
            assert all(p.error is None for p in preds), [p.error for p in preds]
            sent = server.stats()["bytes_received"] // n
            speeds[label] = {"images": n, "images_per_s": round(n / wall, 2), "bytes_per_image": sent}
        before, after = (v["images_per_s"] for v in speeds.values())
        out["uplink_50_mbit_s"] = {**speeds, "speedup": round(after / before, 1)}
    finally:
        server.close()
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="defake-ttr-"))
    out: dict = {"latency_s": LATENCY, "image": "256x192 noise JPEG, about 30 KB"}
    server = start_server()
    try:
        out["time_to_result"], out["warm_rerun_10k"] = time_to_result(server, tmp)
    finally:
        server.close()
    out["rate_limits"] = rate_limited(tmp)
    out["bytes"] = uplink(tmp)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
