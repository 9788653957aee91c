"""A live Dagster deployment for tests and measurements: ``dagster dev`` (webserver, daemon
and code server) on 127.0.0.1, on a throwaway copy of the demo project, read through GraphQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from defake_pipeline.settings import PACKAGE_ROOT

_RUNS_QUERY = """
query Runs($cursor: String) {
  runsOrError(limit: 500, cursor: $cursor) {
    ... on Runs { results { runId jobName status tags { key value } creationTime startTime endTime
                            assetSelection { path } } }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(root: Path, models_toml: str = 'registered = ["canny"]\n') -> Path:
    """A project folder with its own copy of the demo images and the shipped prompts and models.toml."""
    (root / "datasets").mkdir(parents=True)
    shutil.copytree(PACKAGE_ROOT / "demo" / "real", root / "images" / "real")
    shutil.copytree(PACKAGE_ROOT / "demo" / "fake", root / "images" / "fake")
    (root / "datasets" / "demo.toml").write_text('name = "demo"\nlayout = "real_fake"\nroot = "../images"\n')
    shutil.copytree(PACKAGE_ROOT / "prompts", root / "prompts")
    (root / "models.toml").write_text(models_toml)
    return root


class LiveDagster:
    """``dagster dev`` for one project folder, with its own DAGSTER_HOME and DEFAKE_HOME, started
    as a user starts it: ``mllmdf ui`` in the project's folder."""

    def __init__(self, project: Path, home: Path, env: dict[str, str] | None = None):
        self.project = project
        self.dagster_home = home / "dagster_home"
        self.defake_home = home / "outputs"
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_ROOT / "instance" / "dagster.yaml", self.dagster_home / "dagster.yaml")
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "DEFAKE_HOME": str(self.defake_home),
            **(env or {}),
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "dagster-dev.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0  # time.time() of the last start: runs created since are its daemon's

    def cli(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        """``mllmdf`` in the project folder, on the same instance."""
        mllmdf = str(Path(sys.executable).with_name("mllmdf"))
        return subprocess.run(
            [mllmdf, *args],
            cwd=self.project,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            check=check,
            timeout=600,
        )

    def start(self, timeout_s: float = 180, folder: Path | None = None) -> None:
        """``mllmdf ui`` in ``folder`` (default: the project's root), until its code location loads."""
        mllmdf = str(Path(sys.executable).with_name("mllmdf"))
        self.started = time.time()
        self._log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [mllmdf, "ui", "--port", str(self.port)],
            cwd=folder or self.project,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self._location_loaded():
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"dagster dev did not load the code location within {timeout_s} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # dagster dev spawns a webserver, a daemon and a code server: end the whole group.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def kill(self) -> None:
        """End ``dagster dev`` and everything it started at once, as a crash or an OOM kill would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())
        if data.get("errors"):
            raise RuntimeError(data["errors"])
        return data["data"]

    def _location_loaded(self) -> bool:
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        return bool(entries) and all(
            e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def runs(self) -> list[dict]:
        """Every run of the instance, newest first, tags as a dict."""
        runs = self.graphql(_RUNS_QUERY)["runsOrError"]["results"]
        for run in runs:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return runs

    def sensor_ticks(self, since: float) -> dict[str, int]:
        """Ticks each sensor has had since ``since`` (``time.time()``), by sensor name."""
        data = self.graphql(
            'query Ticks($after: Float) { sensorsOrError(repositorySelector: {repositoryName: "__repository__", '
            'repositoryLocationName: "defake_pipeline"}) { ... on Sensors { results { name '
            "sensorState { ticks(afterTimestamp: $after, limit: 1000) { timestamp } } } } } }",
            {"after": since},
        )
        return {s["name"]: len(s["sensorState"]["ticks"]) for s in data["sensorsOrError"]["results"]}

    def open_backfills(self) -> list[dict]:
        """Backfills the daemon has not finished (it turns them into runs every 30 s)."""
        data = self.graphql(
            "{ partitionBackfillsOrError(status: REQUESTED) { ... on PartitionBackfills { results { id status } } } }"
        )
        return data["partitionBackfillsOrError"]["results"]

    def wait_quiet(self, since: float, quiet_ticks: int = 2, timeout_s: float = 300) -> float:
        """Wait until no run is queued or running and every sensor has ticked ``quiet_ticks`` times
        since the last one ended with no run started; returns the time the last run launched after
        ``since`` ended (or ``since``). A run any sensor would launch is launched on the first tick
        that sees its reason, so ticks, not seconds, prove the runs a change set off are done."""
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            runs = [r for r in self.runs() if (r["creationTime"] or 0) >= since]
            busy = [r for r in runs if r["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")]
            busy += self.open_backfills()
            if busy or (quiet_since is not None and any((r["creationTime"] or 0) >= quiet_since for r in runs)):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.time()
            elif min(self.sensor_ticks(quiet_since).values(), default=0) >= quiet_ticks:
                return max([since, *[r["endTime"] or 0 for r in runs]])
            time.sleep(1)
        raise TimeoutError(f"runs still going after {timeout_s} s")
