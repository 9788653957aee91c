"""The always-on pipeline as people run it: ``dagster dev`` with its daemon, on a copy of the demo.

One deployment goes through the scenarios in order, asserting on the instance's runs (read
through GraphQL) and on the files. It registers the Canny baseline and a chat model served by
the project's test server on 127.0.0.1 (``live-vlm``), which answers every prompt. Runs
launched and seconds from each change to the updated leaderboard and reports are written to
test-artifacts/live_pipeline.json.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import dagster as dg
import pytest
from PIL import Image

from conftest import REPO
from defake_pipeline.testing.chat_server import ChatServer, Faults, ServerState
from defake_pipeline.testing.live import LiveDagster, make_project
from defake_pipeline.text import slugify

pytestmark = pytest.mark.live
ARTIFACTS = REPO / "test-artifacts"
N_PROMPTS = len(list((REPO / "prompts").glob("*.json")))
N_RANKED = N_PROMPTS + 1  # the chat model on every prompt, the baseline once
VLM = "live-vlm"
NEW_IMAGE_DEADLINE_S = 60
IDLE_S = 300

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


def wait_for(condition, timeout_s: float, step_s: float = 0.5) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


class Scenarios:
    def __init__(self, live: LiveDagster):
        self.live = live
        self.figures: dict[str, dict] = {}
        self.daemon_started = 0.0
        self.models_toml = ""

    def settle(self, name: str, since: float, **extra) -> list[dict]:
        self.live.wait_quiet(since, settle_s=20, timeout_s=300)
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
        wait_for(lambda: len(ranked(self.live)) >= N_RANKED and consistent(self.live), 300)
        self.live.wait_quiet(self.daemon_started, settle_s=20, timeout_s=300)


@pytest.fixture(scope="module")
def vlm_server():
    with ChatServer(ServerState()) as server:
        yield server


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, vlm_server):
    root = tmp_path_factory.mktemp("live")
    models = f'registered = ["canny", "{VLM}"]\n\n[models.{VLM}]\npreset = "vllm"\nbase_url = "{vlm_server.base_url}"\n'
    live = LiveDagster(make_project(root / "project", models), root)
    runner = Scenarios(live)
    runner.models_toml = models
    started = time.time()
    live.cli("materialize", "--model", "canny", "--prompt", "simple")  # what `make demo` runs
    runner.daemon_started = time.time()
    live.start()
    runner.figures["setup_s"] = {"seconds": round(time.time() - started, 1)}
    try:
        yield runner
    finally:
        live.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "live_pipeline.json").write_text(json.dumps(runner.figures, indent=1))
        shutil.copy(live.log_path, ARTIFACTS / "live-dagster-dev.log")


def test_first_start_after_make_demo(scenarios):
    live = scenarios.live
    since = scenarios.daemon_started
    seconds = wait_for(lambda: len(ranked(live)) == N_RANKED and consistent(live), 240)
    runs = scenarios.settle("first_start", since, seconds=round(seconds, 1))
    # The first scan of the datasets (one run through to the reports, the baseline included),
    # one run for the chat model's partitions, one rebuild.
    assert len(runs) <= 3, [(r["jobName"], r["tags"].get("dagster/partition")) for r in runs]
    assert consistent(live)


def test_new_image_reaches_every_report(scenarios):
    live = scenarios.live
    before = ranked(live)
    since = time.time()
    Image.new("RGB", (64, 48), "purple").save(live.project / "images" / "fake" / "live_new.png")
    seconds = wait_for(
        lambda: (board := ranked(live)) and all(board.get(k) == n + 1 for k, n in before.items()) and consistent(live),
        NEW_IMAGE_DEADLINE_S + 60,
    )
    runs = scenarios.settle("new_image", since, seconds=round(seconds, 1))
    assert seconds <= NEW_IMAGE_DEADLINE_S, f"took {seconds:.1f} s"
    assert len(runs) == 1  # manifest, the baseline, every partition, the warehouse and the reports: one run
    assert ranked(live)[("canny", "-")] == before[("canny", "-")] + 1  # the baseline, once
    assert all("live_new.png" in f.read_text() for f in (live.defake_home / "reports").glob("*__*.md"))


def test_new_prompt(scenarios):
    live = scenarios.live
    since = time.time()
    data = json.loads((REPO / "prompts" / "simple.json").read_text())
    data["name"] = "live extra"
    (live.project / "prompts" / "live_extra.json").write_text(json.dumps(data))
    seconds = wait_for(lambda: (VLM, "live_extra") in ranked(live) and consistent(live), 120)
    runs = scenarios.settle("new_prompt", since, seconds=round(seconds, 1))
    assert ("canny", "live_extra") not in ranked(live)  # a baseline reads no prompt
    assert len(runs) <= 2  # the new partition, one rebuild


def test_edited_prompt(scenarios):
    live = scenarios.live
    report = live.defake_home / "reports" / f"{VLM}__live_extra.md"
    old_text = report.read_text()
    since = time.time()
    path = live.project / "prompts" / "live_extra.json"
    data = json.loads(path.read_text())
    data["conversations"][0]["payload"][-1][1] = "Photograph or generated? Answer real or generated."
    path.write_text(json.dumps(data))
    seconds = wait_for(lambda: report.exists() and report.read_text() != old_text and consistent(live), 120)
    runs = scenarios.settle("edited_prompt", since, seconds=round(seconds, 1))
    assert len(runs) <= 2  # that prompt's partition, one rebuild
    assert {r["tags"].get("dagster/partition") for r in runs if r["tags"].get("dagster/partition")} == {
        f"{VLM}|live_extra"
    }


def test_prompt_file_removed(scenarios):
    live = scenarios.live
    since = time.time()
    (live.project / "prompts" / "live_extra.json").unlink()
    seconds = wait_for(lambda: (VLM, "live_extra") not in ranked(live) and consistent(live), 120)
    runs = scenarios.settle("prompt_removed", since, seconds=round(seconds, 1))
    assert len(runs) <= 1
    assert not (live.defake_home / "reports" / f"{VLM}__live_extra.md").exists()


def with_models(scenarios: Scenarios, *names: str) -> str:
    """The first start's models.toml, registering ``names`` too ("My VLM": a second chat model on
    the same test server; others need their own entry added)."""
    base_url = re.search(r'base_url = "([^"]+)"', scenarios.models_toml).group(1)
    listed = ", ".join(f'"{n}"' for n in names)
    text = scenarios.models_toml.replace(f'"{VLM}"]', f'"{VLM}", {listed}]')
    return text + f'\n[models."My VLM"]\npreset = "vllm"\nbase_url = "{base_url}"\n'


def test_model_added_to_models_toml(scenarios):
    live = scenarios.live
    since = time.time()
    (live.project / "models.toml").write_text(with_models(scenarios, "My VLM"))
    key = slugify("My VLM")
    seconds = wait_for(lambda: sum(m == key for m, _ in ranked(live)) == N_PROMPTS and consistent(live), 180)
    runs = scenarios.settle("model_added", since, seconds=round(seconds, 1))
    assert len(runs) <= 2  # every new partition in one run, one rebuild


def test_model_whose_endpoint_fails_is_kept_off_the_leaderboard(scenarios):
    live = scenarios.live
    with ChatServer(ServerState(faults=Faults(rate_500=1.0))) as server:
        since = time.time()
        (live.project / "models.toml").write_text(
            with_models(scenarios, "My VLM", "broken")
            + f'\n[models.broken]\npreset = "vllm"\nbase_url = "{server.base_url}"\nmax_retries = 0\n'
        )
        wait_for(lambda: not_ranked(live).count("`broken`") == N_PROMPTS, 240)
        runs = scenarios.settle("failing_endpoint", since)
    assert not any(m == "broken" for m, _ in ranked(live))
    assert "error rate 100.0%" in not_ranked(live)
    assert not list((live.defake_home / "reports").glob("broken__*"))
    assert consistent(live) and len(runs) <= 2


def test_mistaken_cli_run_leaves_nothing_behind(scenarios):
    live = scenarios.live
    since = time.time()
    result = live.cli("materialize", "--model", "gpt4o", "--prompt", "simple", check=False, env={"OPENAI_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: model 'gpt4o' needs OPENAI_API_KEY, which is not set"]
    offline = live.cli("materialize", "--model", "qwen2vl", check=False, env={"BASE_URL": "http://127.0.0.1:9/v1"})
    assert offline.returncode == 2 and "cannot reach" in offline.stderr and "Traceback" not in offline.stderr
    time.sleep(30)
    runs = scenarios.settle("mistaken_cli", since)
    assert runs == []
    instance = dg.DagsterInstance.from_config(str(live.dagster_home))
    assert not {"gpt4o", "qwen2vl"} & set(instance.get_dynamic_partitions("model"))
    assert not any(m in ("gpt4o", "qwen2vl") for m, _ in ranked(live))
    assert not list((live.defake_home / "reports").glob("gpt4o__*"))


def test_cli_run_while_the_daemon_runs_sets_nothing_off(scenarios):
    """A CLI run that found nothing new, and one for a model models.toml does not register, start
    their own runs and nothing else: the ad hoc model gets no other request in two minutes."""
    live = scenarios.live
    scenarios.at_rest()
    with ChatServer(ServerState(served_model="adhoc-vlm")) as adhoc:
        since = time.time()
        live.cli("materialize", "--model", "canny", "--prompt", "simple")
        live.cli("materialize", "--model", "qwen2vl", "--prompt", "simple", env={"BASE_URL": adhoc.base_url})
        asked = adhoc.state.n_chat
        time.sleep(120)
        n_images = len([f for f in (live.project / "images").rglob("*") if f.is_file()])
        assert adhoc.state.n_chat == asked == n_images  # each image once, for the one prompt asked
    runs = [r for r in live.runs() if r["creationTime"] >= since]
    # Each CLI run's own: manifest, the baseline or the one partition, publish. No daemon run.
    assert sorted(r["jobName"] for r in runs) == sorted(
        ["refresh_manifests", "evaluate_baselines", "publish", "refresh_manifests", "evaluate", "publish"]
    ), [(r["jobName"], r["creationTime"] - since, r["tags"]) for r in runs]
    assert all(r["tags"].get("defake/source") == "cli" for r in runs)
    scenarios.figures["cli_while_daemon"] = {"runs": len(runs), "daemon_runs": 0, "adhoc_requests": asked}
    assert ("qwen2vl", "simple") in ranked(live)  # what the CLI asked for is published
    assert consistent(live)


def test_idle_five_minutes_launch_nothing(scenarios):
    live = scenarios.live
    scenarios.at_rest()
    since = time.time()
    time.sleep(IDLE_S)
    runs = [r for r in live.runs() if r["creationTime"] >= since]
    scenarios.figures["idle_5_min"] = {"runs": len(runs)}
    assert runs == [], [(r["jobName"], r["tags"]) for r in runs]
    assert consistent(live)
