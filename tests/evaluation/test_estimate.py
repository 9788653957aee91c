"""``mllmdf estimate`` and ``infer --max-cost``: what a run would send and cost, found on the
run's own road against the journal, and checked against the usage the test server reports
(computed there from OpenAI's published rules)."""

import re
import shutil

import duckdb
import pytest
from click.testing import CliRunner

from conftest import REPO, demo_dataset
from defake_pipeline.cli import main
from defake_pipeline.warehouse.layout import HomeLayout

FIGURES = re.compile(
    r"(?P<images>\d+) images, (?P<requests>\d+) requests to send for \d+ of them \((?P<answered>\d+) answered before, "
    r"free\); (?P<input>[\d,]+) input tokens(?: \(\+ up to (?P<carried>[\d,]+) for earlier answers in later turns\))? "
    r"\+ up to (?P<output>[\d,]+) output tokens; at most \$(?P<usd>[\d.]+)"
)


@pytest.fixture
def project(defake_home, tmp_path, monkeypatch, chat_server):
    """The demo dataset in a project of its own; both kinds of model answered by the test server."""
    demo_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASE_URL", chat_server.base_url)
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return chat_server


def estimate(*args: str) -> dict[str, float]:
    result = CliRunner().invoke(main, ["estimate", *args])
    assert result.exit_code == 0, result.output
    found = FIGURES.search(result.output)
    assert found, result.output
    return {k: float((v or "0").replace(",", "")) for k, v in found.groupdict().items()}


@pytest.mark.parametrize(("model", "rule"), [("gpt4o", "512-px tiles, detail high"), ("vllm", "28-px patches")])
def test_the_estimate_matches_the_usage_the_server_reports_and_a_rerun_costs_nothing(project, model, rule):
    before = estimate("-m", model, "-p", "simple")
    assert project.state.n_chat == 0  # an estimate sends nothing
    assert (before["images"], before["requests"], before["answered"]) == (16, 16, 0)
    result = CliRunner().invoke(main, ["materialize", "-m", model, "-p", "simple"])
    assert result.exit_code == 0, result.output
    assert project.state.n_chat == 16
    reported = reported_prompt_tokens(model)
    assert abs(before["input"] - reported) <= 0.05 * reported, (rule, before["input"], reported)
    after = estimate("-m", model, "-p", "simple")
    assert (after["requests"], after["answered"], after["usd"]) == (0, 16, 0)


def reported_prompt_tokens(model: str, prompt: str = "simple") -> int:
    """The input tokens of the model's answers as the server's usage reported them (in the warehouse)."""
    layout = HomeLayout()
    with duckdb.connect(str(layout.warehouse), read_only=True) as con:
        sql = "SELECT sum(prompt_tokens) FROM predictions WHERE model = ? AND prompt = ?"
        [(total,)] = con.execute(sql, [model, prompt]).fetchall()
    return int(total)


def test_a_conversation_of_four_turns_is_estimated_within_five_percent_and_bounded(project):
    """Later turns carry earlier answers, unknown before they are asked: counted apart, at most
    the whole allowance, so the dollars stay an upper bound."""
    before = estimate("-m", "gpt4omini", "-p", "fusion")
    assert before["requests"] == 4 * 16 and before["carried"] == (1 + 2 + 3) * 16 * 1000
    assert CliRunner().invoke(main, ["materialize", "-m", "gpt4omini", "-p", "fusion"]).exit_code == 0
    reported = reported_prompt_tokens("gpt4omini", "fusion")
    assert abs(before["input"] - reported) <= 0.05 * reported
    assert before["input"] + before["carried"] >= reported


def test_a_cap_below_the_estimate_sends_nothing_and_says_why_in_one_line(project):
    figures = estimate("-m", "gpt4o", "-p", "simple", "-d", "demo")
    assert figures["usd"] > 0.001
    result = CliRunner().invoke(
        main, ["infer", "-m", "gpt4o", "-p", "simple", "--dataset", "demo", "--max-cost", "0.001", "-o", "capped"]
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max-cost $0.0010 is below what this run may cost; nothing was sent" in errors[0]
    assert f"at most ${figures['usd']:.4f}" in errors[0]
    assert project.state.n_chat == 0


@pytest.mark.parametrize("cap", ["nan", "-nan"])
def test_a_cap_that_is_not_a_number_is_refused_and_nothing_is_sent(project, cap):
    """NaN is over no cost, so as a cap it would let every request through."""
    result = CliRunner().invoke(
        main, ["infer", "-m", "gpt4o", "-p", "simple", "--dataset", "demo", "--max-cost", cap, "-o", "nan"]
    )
    assert result.exit_code == 2
    assert "--max-cost" in result.output and "Traceback" not in result.output
    assert project.state.n_chat == 0


def test_a_cap_above_the_estimate_runs(project):
    figures = estimate("-m", "gpt4o", "-p", "simple", "-d", "demo")
    cap = f"{figures['usd'] * 1.01:.4f}"
    result = CliRunner().invoke(
        main, ["infer", "-m", "gpt4o", "-p", "simple", "--dataset", "demo", "--max-cost", cap, "-o", "ok"]
    )
    assert result.exit_code == 0, result.output
    assert project.state.n_chat == 16


def test_the_dry_run_job_records_the_same_figures_on_the_partition(project):
    import dagster as dg

    from defake_pipeline.definitions import defs

    printed = estimate("-m", "vllm", "-p", "simple")
    instance = dg.DagsterInstance.ephemeral()
    config = {"ops": {"estimate_predictions": {"config": {"model": "vllm", "prompt": "simple"}}}}
    result = defs.get_job_def("estimate").execute_in_process(run_config=config, instance=instance)
    assert result.success and project.state.n_chat == 0
    [observed] = [e.asset_observation_data.asset_observation for e in result.all_events if e.is_asset_observation]
    assert observed.partition == "vllm|simple"
    figures = {k: v.value for k, v in observed.metadata.items()}
    assert (figures["requests_to_send"], figures["input_tokens"]) == (printed["requests"], printed["input"])
    assert figures["usd_at_most"] == pytest.approx(printed["usd"], abs=1e-4)


def test_with_no_model_or_prompt_named_the_estimate_prices_what_materialize_would_run(project, tmp_path):
    """The same defaults as `materialize`: every registered model × every prompt file."""
    (tmp_path / "prompts").mkdir()
    for name in ("simple", "fusion"):
        shutil.copy(REPO / "prompts" / f"{name}.json", tmp_path / "prompts")
    (tmp_path / "models.toml").write_text('registered = ["canny", "gpt4omini", "vllm"]\n')
    result = CliRunner().invoke(main, ["estimate"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "canny is a baseline detector: it runs here and sends no request; $0" in lines
    priced = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^on demo: (\S+ × \S+): .*at most \$([\d.]+)", result.output, re.M)
    }
    assert set(priced) == {"gpt4omini × fusion", "gpt4omini × simple", "vllm × fusion", "vllm × simple"}
    assert priced["gpt4omini × simple"] == estimate("-m", "gpt4omini", "-p", "simple")["usd"] > 0
    assert lines[-1] == f"in all: at most ${sum(priced.values()):.4f}"
    assert project.state.n_chat == 0
