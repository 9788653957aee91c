"""Progress of a partition while it runs: lines in the run log (the UI) and on the CLI, a bar per
partition on a terminal."""

import io
import re
import sys

import dagster as dg
import pytest
from click.testing import CliRunner

from conftest import real_fake_dataset
from defake_pipeline.cli import main
from defake_pipeline.cli.bars import PartitionBars
from defake_pipeline.evaluation.progress import parse_progress

pytestmark = pytest.mark.timeout(240)


def test_a_60_image_partition_reports_progress_on_the_cli_and_in_the_run_log(tmp_path, chat_server, monkeypatch):
    chat_server.state.latency_s = 0.4
    real_fake_dataset(tmp_path, "sixty", 30)
    (tmp_path / "models.toml").write_text('registered = []\n[models.slow]\npreset = "vllm"\nconcurrency = 4\n')
    env = {"DEFAKE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    env.update(BASE_URL=chat_server.base_url, OPENAI_API_KEY=None, OPENAI_BASE_URL=None)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["materialize", "-m", "slow", "-p", "simple", "-d", "sixty"], env=env)
    assert result.exit_code == 0, result.output
    # What the command printed (not to a terminal here: progress lines, not bars).
    reports = [r for line in result.output.splitlines() if (r := parse_progress(line))]
    assert reports and reports[-1].done == reports[-1].total == 60
    before_the_end = [r for r in reports if r.done < 60]
    assert len(before_the_end) >= 2, result.output
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


def test_a_partition_run_in_this_process_shows_its_progress_lines_as_a_bar(monkeypatch):
    from defake_pipeline.cli.bars import bars_in_this_process

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with bars_in_this_process():
        print("... - predictions - progress m|p: 20/60 images (33%), 9.5/s, ETA 5s, 0 errors", file=sys.stderr)
        print("... - predictions - m|p: 60 images: 0 from the journal", file=sys.stderr)
    assert sys.stderr is terminal
    shown = terminal.getvalue()
    assert "m|p:  33%|" in shown and "20/60 images, 9.5/s, ETA 5s, 0 errors" in shown
    assert "progress m|p" not in shown and "m|p: 60 images: 0 from the journal" in shown
