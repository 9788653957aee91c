"""Progress of a partition while it runs: lines in the run log (the UI) and on the CLI, a bar per
partition on a terminal."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from defake_pipeline.cli.bars import PartitionBars
from defake_pipeline.evaluation.progress import parse_progress

MLLMDF = str(Path(sys.executable).with_name("mllmdf"))
pytestmark = pytest.mark.timeout(240)


def test_a_60_image_partition_reports_progress_on_the_cli_and_in_the_run_log(tmp_path, chat_server):
    chat_server.state.latency_s = 0.4
    for label in ("real", "fake"):
        (tmp_path / "sixty" / label).mkdir(parents=True)
        for i in range(30):
            color = (i * 8, 100 if label == "real" else 200, 50)
            Image.new("RGB", (24, 24), color).save(tmp_path / "sixty" / label / f"{i}.png")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "sixty.toml").write_text('layout = "real_fake"\nroot = "../sixty"\n')
    (tmp_path / "models.toml").write_text('registered = []\n[models.slow]\npreset = "vllm"\nconcurrency = 4\n')
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "BASE_URL", "OPENAI_BASE_URL")}
    env.update(
        DEFAKE_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "dagster_home"), BASE_URL=chat_server.base_url
    )
    (tmp_path / "dagster_home").mkdir()
    out = subprocess.run(
        [MLLMDF, "materialize", "-m", "slow", "-p", "simple", "-d", "sixty"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert out.returncode == 0, out.stderr
    reports = [r for line in out.stderr.splitlines() if (r := parse_progress(line))]
    assert reports and reports[-1].done == reports[-1].total == 60
    before_the_end = [r for r in reports if r.done < 60]
    assert len(before_the_end) >= 2, out.stderr
    assert all(re.fullmatch(r"[\d.]+/s, ETA \w+, \d+ errors", r.rest) for r in reports)
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    [run] = [r for r in instance.get_runs() if r.job_name == "evaluate"]
    messages = [e.user_message for e in instance.all_logs(run.run_id)]
    assert sum(1 for m in messages if parse_progress(m) and parse_progress(m).done < 60) >= 2


def test_on_a_terminal_progress_lines_become_one_bar_per_partition(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bars = PartitionBars(enabled=True)
    prefix = "2026-12-03 - dagster - INFO - evaluate - run - predictions - "
    bars.relay(prefix + "progress a|simple: 3/60 images (5%), 9.0/s, ETA 6s, 0 errors\n")
    bars.relay(prefix + "progress b|simple: 30/60 images (50%), 9.0/s, ETA 3s, 1 errors\n")
    bars.relay("some other line\n")
    bars.close()
    shown = err.getvalue()
    assert "a|simple" in shown and "3/60" in shown and "b|simple" in shown and "30/60" in shown
    assert "some other line" in shown and "progress a|simple" not in shown  # shown as bars, not lines
