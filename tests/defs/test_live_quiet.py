"""The live pipeline at rest: mistaken and ad hoc CLI runs set nothing off, and an idle daemon
launches nothing (see live_scenarios). A deployment of its own, so these run beside the changes."""

from __future__ import annotations

import datetime
import json
import re
import time
import urllib.request

import dagster as dg
import pytest
from live_scenarios import IDLE_TICKS, VLM, consistent, explain, ranked, scenarios_fixture, wait_for, wait_ticks

from conftest import QWEN2VL_ID
from defake_pipeline.testing.chat_server import ChatServer, ServerState

# `make test` hands each module to one worker (--dist loadscope): the scenarios share one
# deployment and run in order.
pytestmark = pytest.mark.live
scenarios = scenarios_fixture("live_quiet")


def test_the_ui_started_in_a_subfolder_serves_the_project(scenarios):
    """`mllmdf ui` ran in the project's images/ folder: one code location, named as `dg` names it,
    loaded in the project's root (so its sensors watch that project, as the scenarios here show),
    and no warning about either at start."""
    live = scenarios.live
    data = live.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
    assert data["workspaceOrError"]["locationEntries"] == [{"name": "defake_pipeline", "loadStatus": "LOADED"}]
    workspace = json.loads((live.dagster_home / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["working_directory"] == str(live.project)
    log = live.log_path.read_text()
    assert "does not match the name" not in log and "SupersessionWarning" not in log


def test_mistaken_cli_run_leaves_nothing_behind(scenarios):
    live = scenarios.live
    scenarios.at_rest()
    since = time.time()
    result = live.cli("materialize", "--model", "gpt4o", "--prompt", "simple", check=False, env={"OPENAI_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: model 'gpt4o' needs OPENAI_API_KEY, which is not set"]
    offline = live.cli("materialize", "--model", "qwen2vl", check=False, env={"BASE_URL": "http://127.0.0.1:9/v1"})
    assert offline.returncode == 2 and "cannot reach" in offline.stderr and "Traceback" not in offline.stderr
    wait_ticks(live, since, 3)
    runs = scenarios.settle("mistaken_cli", since)
    assert runs == []
    instance = dg.DagsterInstance.from_config(str(live.dagster_home))
    assert not {"gpt4o", "qwen2vl"} & set(instance.get_dynamic_partitions("model"))
    assert not any(m in ("gpt4o", "qwen2vl") for m, _ in ranked(live))
    assert not list((live.defake_home / "reports").glob("gpt4o__*"))


def test_cli_run_while_the_daemon_runs_sets_nothing_off(scenarios):
    """A CLI run that found nothing new, and one for a model models.toml does not register, start
    their own runs and nothing else: the ad hoc model gets no other request over ten ticks of
    every sensor."""
    live = scenarios.live
    scenarios.at_rest()
    with ChatServer(ServerState(served_model=QWEN2VL_ID)) as adhoc:
        since = time.time()
        live.cli("materialize", "--model", "canny", "--prompt", "simple")
        live.cli("materialize", "--model", "qwen2vl", "--prompt", "simple", env={"BASE_URL": adhoc.base_url})
        asked = adhoc.state.n_chat
        wait_ticks(live, time.time(), IDLE_TICKS)
        n_images = len([f for f in (live.project / "images").rglob("*") if f.is_file()])
        assert adhoc.state.n_chat == asked == n_images  # each image once, for the one prompt asked
    runs = [r for r in live.runs() if r["creationTime"] >= since]
    # Each CLI run's own: manifest, the baseline or the one partition, publish. No daemon run.
    assert sorted(r["jobName"] for r in runs) == sorted(
        ["refresh_manifests", "evaluate_baselines", "publish", "refresh_manifests", "evaluate", "publish"]
    ), "\n".join(explain(live, runs))
    assert all(r["tags"].get("defake/source") == "cli" for r in runs)
    scenarios.figures["cli_while_daemon"] = {"runs": len(runs), "daemon_runs": 0, "adhoc_requests": asked}
    assert ("qwen2vl", "simple") in ranked(live)  # what the CLI asked for is published
    assert consistent(live)


def test_idle_ten_ticks_launch_nothing(scenarios):
    live = scenarios.live
    scenarios.at_rest()
    since = time.time()
    ticks = wait_ticks(live, since, IDLE_TICKS)
    runs = [r for r in live.runs() if r["creationTime"] >= since]
    scenarios.figures["idle"] = {"runs": len(runs), "seconds": round(time.time() - since, 1), "ticks": ticks}
    assert runs == [], "\n".join(explain(live, runs))
    assert consistent(live)


def test_a_night_asks_the_drift_canary_and_launches_nothing_else(scenarios):
    """The nightly schedule, its cron set to fire within the test: one run rescans the datasets and
    asks the canary (the chat model's entry opts in: it is self-hosted), whose check passes
    against an unchanged server; nothing else is launched, and only the canary asks the model."""
    live = scenarios.live
    scenarios.at_rest()
    base_url = re.search(r'base_url = "([^"]+)"', scenarios.models_toml).group(1)
    stats_url = base_url.removesuffix("/v1") + "/stats"
    opted_in = scenarios.models_toml.replace(f"[models.{VLM}]\n", f"[models.{VLM}]\ncanary = true\ncanary_min = 5\n")
    (live.project / "models.toml").write_text(opted_in)
    live.stop()
    # The next whole minute at least 5 s away. Should dagster dev come up after it, the scheduler
    # launches the tick it missed on its first visit, as after any restart of the daemon.
    fires = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=65)).replace(second=0, microsecond=0)
    live.env["DEFAKE_NIGHTLY_CRON"] = f"{fires.minute} {fires.hour} * * *"
    since = time.time()
    live.start()
    asked_before = _stats(stats_url)["n_chat"]
    wait_for(lambda: any(r["tags"].get("defake/trigger") == "nightly_reevaluation" for r in live.runs()), 300)
    live.wait_quiet(since)
    wait_ticks(live, time.time(), IDLE_TICKS)  # and then quiet, tick after tick
    runs = [r for r in live.runs() if r["creationTime"] >= since]
    assert [(r["tags"].get("defake/trigger"), r["status"]) for r in runs] == [("nightly_reevaluation", "SUCCESS")]
    instance = dg.DagsterInstance.from_config(str(live.dagster_home))
    canary = instance.get_latest_materialization_event(dg.AssetKey("drift_canaries")).asset_materialization.metadata
    [check] = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("drift_canaries"), "canary_agreement")]
    ).values()
    assert check.event.dagster_event.event_specific_data.passed
    n_prompts = sum(1 for m, _ in ranked(live) if m == VLM)
    # canary_min images asked again in each of the chat model's partitions, all agreeing (a
    # prompt of several turns asks each again); the only requests of the night.
    assert canary["partitions"].value.count(" | 5 | 1.000 | ") == n_prompts
    assert canary["requests"].value == _stats(stats_url)["n_chat"] - asked_before > 0
    scenarios.figures["night"] = {"runs": len(runs), "canary_requests": canary["requests"].value}
    assert consistent(live)


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())
