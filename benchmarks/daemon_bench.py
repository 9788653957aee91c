"""Under the daemon: seconds from a new image landing in a dataset to every report and the
leaderboard counting it, and the runs that took. Prints one JSON object.

The deployment is `make demo`'s project under ``dagster dev`` with its daemon, the Canny baseline
and a chat model on the project's test server (1 s per answer, a hosted model's pace) registered
on every shipped prompt. Sensors at their default interval, as users run them.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from engine_bench import Server
from PIL import Image

from defake_pipeline.testing.live import LiveDagster, make_project

LATENCY_S = 1.0
MODEL = "bench-vlm"
STUCK_AFTER_S = 600


def every_report_has(live: LiveDagster, name: str, n_reports: int, since: float) -> bool:
    """Every report lists ``name`` and the leaderboard was rewritten after ``since``."""
    reports = list((live.defake_home / "reports").glob("*__*.md"))
    board = live.defake_home / "reports" / "leaderboard.md"
    return (
        len(reports) == n_reports
        and all(name in f.read_text(encoding="utf-8") for f in reports)
        and board.exists()
        and board.stat().st_mtime >= since
    )


def wait(condition, timeout_s: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"not done within {timeout_s} s")
        time.sleep(0.25)
    return time.monotonic() - started


def main() -> None:
    server = Server(LATENCY_S)
    root = Path(tempfile.mkdtemp(prefix="defake-daemon-"))
    models = f'registered = ["canny", "{MODEL}"]\n\n[models.{MODEL}]\npreset = "vllm"\nbase_url = "{server.base_url}"\n'
    live = LiveDagster(make_project(root / "project", models), root)
    n_reports = len(list((live.project / "prompts").glob("*.json"))) + 1
    out: dict = {"endpoint_latency_s": LATENCY_S, "reports": n_reports}
    try:
        started = time.time()
        live.start()
        out["first_start_s"] = round(wait(lambda: every_report_has(live, "fake", n_reports, started), STUCK_AFTER_S), 1)
        live.wait_quiet(started)
        for i in range(3):
            since = time.time()
            name = f"bench_new_{i}.png"
            Image.new("RGB", (64, 48), (40 * i, 0, 200)).save(live.project / "images" / "fake" / name)
            out.setdefault("new_image_s", []).append(
                round(wait(lambda: every_report_has(live, name, n_reports, since), STUCK_AFTER_S), 1)  # noqa: B023
            )
            live.wait_quiet(since)
            out.setdefault("new_image_runs", []).append(len([r for r in live.runs() if r["creationTime"] >= since]))
    finally:
        live.stop()
        server.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
