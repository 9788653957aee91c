"""The always-on pipeline as people run it: ``dagster dev`` with its daemon, on a copy of the demo.

Each live test module takes one deployment through its scenarios in order, asserting on the
instance's runs (read through GraphQL) and on the files. A deployment registers the Canny
baseline and a chat model served by the project's test server on 127.0.0.1 (``live-vlm``),
which answers every prompt. Runs launched and seconds from each change to the updated
leaderboard and reports are written to test-artifacts/<module>.json.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pytest

from conftest import REPO
from defake_pipeline.testing.chat_server import ChatServer, ServerState
from defake_pipeline.testing.live import LiveDagster, make_project

ARTIFACTS = REPO / "test-artifacts"
N_PROMPTS = len(list((REPO / "prompts").glob("*.json")))
N_RANKED = N_PROMPTS + 1  # the chat model on every prompt, the baseline once
VLM = "live-vlm"
# How long a change may take to reach the reports before the test calls it stuck. Not a speed
# target: `make test` runs three daemons and the Celery workers side by side on two cores, where a
# run's start alone can take tens of seconds. The speed on a quiet machine is measured by
# benchmarks/daemon_bench.py.
STUCK_AFTER_S = 300
# Quiet is proved by sensor ticks, not by minutes: a run the daemon would launch on its own is
# requested on the first tick that sees a reason for it.
IDLE_TICKS = 10
# The daemon visits its sensors every 5 s at most; an interval under that has every sensor
# evaluated on every visit, so ten ticks take about 50 s rather than 100 s at the default.
SENSOR_INTERVAL_S = 1
DAEMON_LOOP_S = 5

_BOARD_ROW = re.compile(r"^\| (\d+) \| `([^`]+)` \| (?:`([^`]+)`|\*baseline\*) \| (\d+) \|", re.M)
_REPORT_ROW = re.compile(r"^\| demo \| (\d+) \|", re.M)


def ranked(live: LiveDagster) -> dict[tuple[str, str], int]:
    """(model, prompt) -> images, for every row the leaderboard ranks."""
    board = live.defake_home / "reports" / "leaderboard.md"
    if not board.exists():
        return {}
    text = board.read_text(encoding="utf-8").split("## Not ranked")[0]
    return {(m, p or "-"): int(n) for _, m, p, n in _BOARD_ROW.findall(text)}


def not_ranked(live: LiveDagster) -> str:
    text = (live.defake_home / "reports" / "leaderboard.md").read_text(encoding="utf-8")
    return text.split("## Not ranked")[1] if "## Not ranked" in text else ""


def reports(live: LiveDagster) -> dict[tuple[str, str], int]:
    """(model, prompt) -> images, from every report file's metrics table."""
    out = {}
    for file in (live.defake_home / "reports").glob("*__*.md"):
        model, prompt = file.stem.split("__")
        match = _REPORT_ROW.search(file.read_text(encoding="utf-8"))
        out[(model, prompt)] = int(match.group(1)) if match else 0
    return out


def consistent(live: LiveDagster) -> bool:
    """Every ranked run has a non-empty report with the same image count, and no other report exists."""
    board = ranked(live)
    return bool(board) and board == reports(live) and all(n > 0 for n in board.values())


def explain(live: LiveDagster, runs: list[dict]) -> list[str]:
    """Each run: its job, seconds from the first, assets, and for a run the automation asked for,
    the conditions that held for each asset it requested (whose tree said why)."""
    instance = dg.DagsterInstance.from_config(str(live.dagster_home))
    first = min((r["creationTime"] for r in runs), default=0)
    lines = []
    for run in sorted(runs, key=lambda r: r["creationTime"]):
        assets = ",".join("/".join(a["path"]) for a in run.get("assetSelection") or [])
        lines.append(f"{run['creationTime'] - first:.1f}s {run['jobName']} [{assets}] {run['tags']}")
        evaluation_id = run["tags"].get("dagster/asset_evaluation_id")
        if evaluation_id is None:
            continue
        for record in instance.schedule_storage.get_auto_materialize_evaluations_for_evaluation_id(int(evaluation_id)):
            evaluation = record.get_evaluation_with_run_ids().evaluation
            if evaluation.true_subset.size:
                lines += [f"  {record.key.to_user_string()}: {held}" for held in _held(evaluation, 0)]
    return lines


def _held(evaluation, depth: int) -> list[str]:
    node = evaluation.condition_snapshot
    if not evaluation.true_subset.size or depth > 6:
        return []
    out = ["  " * depth + (node.label or node.name or node.description)[:100]]
    for child in evaluation.child_evaluations:
        out += _held(child, depth + 1)
    return out


def wait_for(condition, timeout_s: float, step_s: float = 0.5) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def wait_ticks(live: LiveDagster, since: float, n: int) -> dict[str, int]:
    """Wait until every sensor has ticked ``n`` times since ``since``; their tick counts."""
    ticks: dict[str, int] = {}

    def ticked() -> bool:
        ticks.update(live.sensor_ticks(since))
        return bool(ticks) and min(ticks.values()) >= n

    wait_for(ticked, timeout_s=(n + 6) * DAEMON_LOOP_S * 3, step_s=1)
    return ticks


class Scenarios:
    def __init__(self, live: LiveDagster):
        self.live = live
        self.figures: dict[str, dict] = {}
        self.daemon_started = 0.0
        self.models_toml = ""

    def settle(self, name: str, since: float, **extra) -> list[dict]:
        self.live.wait_quiet(since, timeout_s=300)
        runs = [r for r in self.live.runs() if r["creationTime"] >= since]
        failed = [r for r in runs if r["status"] != "SUCCESS"]
        assert not failed, f"{name}: failed runs {[(r['jobName'], r['tags']) for r in failed]}"
        self.figures[name] = {"runs": len(runs), **extra}
        return runs

    def at_rest(self) -> None:
        """Wait until the daemon's first start has published everything and launched its last run,
        so a scenario that counts runs sees only its own, whichever tests ran before it."""
        if "first_start" in self.figures:
            return  # that scenario waited for it, and each later one settled its own runs
        wait_for(lambda: len(ranked(self.live)) >= N_RANKED and consistent(self.live), STUCK_AFTER_S)
        self.live.wait_quiet(self.daemon_started, timeout_s=300)


@contextmanager
def deployment(tmp_path_factory, name: str) -> Iterator[Scenarios]:
    """A fresh deployment after `make demo`: the CLI's first run, then dagster dev with its daemon."""
    with ChatServer(ServerState()) as vlm_server:
        root = tmp_path_factory.mktemp("live")
        models = (
            f'registered = ["canny", "{VLM}"]\n\n[models.{VLM}]\npreset = "vllm"\nbase_url = "{vlm_server.base_url}"\n'
        )
        live = LiveDagster(
            make_project(root / "project", models),
            root,
            env={"DEFAKE_SENSOR_INTERVAL_S": str(SENSOR_INTERVAL_S), "DEFAKE_BATCH_POLL_S": str(SENSOR_INTERVAL_S)},
        )
        runner = Scenarios(live)
        runner.models_toml = models
        started = time.time()
        live.cli("materialize", "--model", "canny", "--prompt", "simple")  # what `make demo` runs
        runner.daemon_started = time.time()
        live.start(folder=live.project / "images")  # any folder of the project serves it
        runner.figures["setup_s"] = {"seconds": round(time.time() - started, 1)}
        try:
            yield runner
        finally:
            live.stop()
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / f"{name}.json").write_text(json.dumps(runner.figures, indent=1))
            shutil.copy(live.log_path, ARTIFACTS / f"{name}-dagster-dev.log")


def scenarios_fixture(name: str):
    """A live module's ``scenarios`` fixture: one deployment for the module, its figures and log
    written to test-artifacts/<name>.*."""

    @pytest.fixture(scope="module")
    def scenarios(tmp_path_factory) -> Iterator[Scenarios]:
        with deployment(tmp_path_factory, name) as runner:
            yield runner

    return scenarios
