"""The live pipeline's changes: a first start, new and changed images, prompts and models, each
carried through to the leaderboard and the reports by the daemon on its own (see live_scenarios)."""

from __future__ import annotations

import json
import re
import time

import pytest
from live_scenarios import (
    N_PROMPTS,
    N_RANKED,
    REPO,
    STUCK_AFTER_S,
    VLM,
    Scenarios,
    consistent,
    explain,
    not_ranked,
    ranked,
    scenarios_fixture,
    wait_for,
)
from PIL import Image

from defake_pipeline.testing.chat_server import ChatServer, Faults, ServerState
from defake_pipeline.text import slugify

# `make test` hands each module to one worker (--dist loadscope): the scenarios share one
# deployment and run in order.
pytestmark = pytest.mark.live
scenarios = scenarios_fixture("live_pipeline")


def test_first_start_after_make_demo(scenarios):
    live = scenarios.live
    since = scenarios.daemon_started
    seconds = wait_for(lambda: len(ranked(live)) == N_RANKED and consistent(live), STUCK_AFTER_S)
    runs = scenarios.settle("first_start", since, seconds=round(seconds, 1))
    # The first scan of the datasets (one run through to the reports, the baseline included),
    # one run for the chat model's partitions, one rebuild.
    assert len(runs) <= 3, "\n".join(explain(live, runs))
    assert consistent(live)


def test_new_image_reaches_every_report(scenarios):
    live = scenarios.live
    before = ranked(live)
    since = time.time()
    Image.new("RGB", (64, 48), "purple").save(live.project / "images" / "fake" / "live_new.png")
    seconds = wait_for(
        lambda: (board := ranked(live)) and all(board.get(k) == n + 1 for k, n in before.items()) and consistent(live),
        STUCK_AFTER_S,
    )
    runs = scenarios.settle("new_image", since, seconds=round(seconds, 1))
    assert len(runs) == 1  # manifest, the baseline, every partition, the warehouse and the reports: one run
    assert ranked(live)[("canny", "-")] == before[("canny", "-")] + 1  # the baseline, once
    assert all("live_new.png" in f.read_text() for f in (live.defake_home / "reports").glob("*__*.md"))


def test_new_prompt(scenarios):
    live = scenarios.live
    since = time.time()
    data = json.loads((REPO / "prompts" / "simple.json").read_text())
    data["name"] = "live extra"
    (live.project / "prompts" / "live_extra.json").write_text(json.dumps(data))
    seconds = wait_for(lambda: (VLM, "live_extra") in ranked(live) and consistent(live), STUCK_AFTER_S)
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
    seconds = wait_for(lambda: report.exists() and report.read_text() != old_text and consistent(live), STUCK_AFTER_S)
    runs = scenarios.settle("edited_prompt", since, seconds=round(seconds, 1))
    assert len(runs) <= 2  # that prompt's partition, one rebuild
    assert {r["tags"].get("dagster/partition") for r in runs if r["tags"].get("dagster/partition")} == {
        f"{VLM}|live_extra"
    }


def test_prompt_file_removed(scenarios):
    live = scenarios.live
    since = time.time()
    (live.project / "prompts" / "live_extra.json").unlink()
    seconds = wait_for(lambda: (VLM, "live_extra") not in ranked(live) and consistent(live), STUCK_AFTER_S)
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
    seconds = wait_for(lambda: sum(m == key for m, _ in ranked(live)) == N_PROMPTS and consistent(live), STUCK_AFTER_S)
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
        wait_for(lambda: not_ranked(live).count("`broken`") == N_PROMPTS, STUCK_AFTER_S)
        runs = scenarios.settle("failing_endpoint", since)
    assert not any(m == "broken" for m, _ in ranked(live))
    assert "error rate 100.0%" in not_ranked(live)
    assert not list((live.defake_home / "reports").glob("broken__*"))
    assert consistent(live) and len(runs) <= 2


def test_a_batch_sent_from_the_cli_is_completed_by_the_sensor_across_a_killed_daemon(scenarios):
    """A partition in batch mode submits its batch and returns; the daemon is killed and started
    again while the batch is open; batches_sensor picks the batch up (never sending it again),
    journals its answers and runs the partition, and the leaderboard follows."""
    live = scenarios.live
    scenarios.at_rest()
    with ChatServer(ServerState()) as server:
        server.state.batch_api.settings.step_s = 10  # open for 30 s: validating, in progress, finalizing
        entry = f'\n[models.batched]\npreset = "vllm"\nbase_url = "{server.base_url}"\nbatch = true\n'
        (live.project / "models.toml").write_text(scenarios.models_toml + entry)
        since = time.time()
        n_images = ranked(live)[("canny", "-")]  # the demo's images, and any an earlier scenario added
        sent = live.cli("materialize", "--model", "batched", "--prompt", "simple")
        said = f"open batch: batched|simple: batch_1 (validating, 0/{n_images} requests done)"
        assert said in sent.stderr, sent.stderr
        assert "quality gate" not in sent.stderr  # it waits for its batch: said once, as such
        assert ("batched", "simple") not in ranked(live)
        live.wait_quiet(since)
        live.kill()
        live.start()
        seconds = wait_for(lambda: ("batched", "simple") in ranked(live) and consistent(live), STUCK_AFTER_S)
        runs = scenarios.settle("batch_completed", since, seconds=round(seconds, 1))
        assert server.state.batch_api.settings.n_batches == 1 and server.state.n_chat == 0
        assert server.state.batch_api.settings.n_lines == ranked(live)[("batched", "simple")]
    triggered = [r for r in runs if r["tags"].get("defake/trigger") == "batches_ended"]
    assert len(triggered) == 1 and triggered[0]["tags"]["dagster/partition"] == "batched|simple"
