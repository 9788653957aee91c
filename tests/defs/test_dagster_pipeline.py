"""The Dagster layer on a real instance: graph shape, and the whole graph materialized on the demo data."""

import re

import dagster as dg
import duckdb
import pytest
from click.testing import CliRunner

from conftest import INTERNVL3_ID, QWEN2VL_ID, demo_dataset, project_dagster_home
from defake_pipeline.cli import main
from defake_pipeline.cli.launch import materialize_evaluation
from defake_pipeline.definitions import defs
from defake_pipeline.defs.partitions import model_prompt_partitions
from defake_pipeline.defs.resources import DefakeHomeFolder, ModelEndpoint
from defake_pipeline.records import NO_PROMPT
from defake_pipeline.warehouse.layout import HomeLayout

EXPECTED_DEPS = {
    "image_manifest": set(),
    "predictions": {"image_manifest"},
    "baseline_predictions": {"image_manifest"},
    "metrics": {"image_manifest", "predictions", "baseline_predictions"},
    "model_reports": {"metrics"},
    "leaderboard": {"metrics"},
    "drift_canaries": {"predictions"},
}


def test_definitions_load_with_the_expected_asset_graph():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_DEPS)
    for key, deps in EXPECTED_DEPS.items():
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(key)).parent_keys}
        assert parents == deps, key
    partitions = graph.get(dg.AssetKey("predictions")).partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    assert {d.name for d in partitions.partitions_defs} == {"model", "prompt"}
    assert all(isinstance(d.partitions_def, dg.DynamicPartitionsDefinition) for d in partitions.partitions_defs)


def _tables(layout: HomeLayout) -> dict[str, int]:
    with duckdb.connect(str(layout.warehouse), read_only=True) as con:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("image_manifest", "predictions", "metrics")
        }


def test_whole_graph_on_demo_with_baseline(defake_home):
    instance = dg.DagsterInstance.ephemeral()
    results = materialize_evaluation(instance, ["canny"], ["simple"])
    assert all(r.success for r in results)
    layout = HomeLayout(defake_home)
    assert _tables(layout) == {"image_manifest": 16, "predictions": 16, "metrics": 2}
    report = layout.report_file("canny", NO_PROMPT).read_text()
    assert "## Wrong predictions" in report and "## Correct predictions" in report
    board = layout.leaderboard_file.read_text()
    assert "| `canny` | *baseline* |" in board and "canny__-.md" in board
    # The report is also attached to the materialization, as markdown metadata the UI can
    # render whole: thumbnails inlined, since the UI cannot load the report's relative paths.
    event = instance.get_latest_materialization_event(dg.AssetKey("model_reports"))
    attached = event.asset_materialization.metadata["canny__-"].value
    # The same tables; the charts are inlined in the UI's copy, linked beside the file.
    charts = re.compile(r"!\[[^]]*\]\([^)]*\)")
    ui_tables, file_tables = (text.split("## Metrics")[1].split("## Wrong")[0] for text in (attached, report))
    assert charts.sub("", ui_tables) == charts.sub("", file_tables)
    assert "](<data:image/svg+xml;base64," in ui_tables and "canny__-__demo.scores.svg" in file_tables
    assert attached.count("](<data:image/jpeg;base64,") == 7 and "thumbs/" not in attached  # 1 wrong, 6 correct
    # A second run reuses every journaled answer.
    materialize_evaluation(instance, ["canny"], ["simple"])
    event = instance.get_latest_materialization_event(dg.AssetKey("baseline_predictions"))
    assert event.asset_materialization.metadata["canny/n_requests"].value == 0
    # Nothing changed, so nothing is rendered again; the UI still shows every current report.
    event = instance.get_latest_materialization_event(dg.AssetKey("model_reports"))
    assert event.asset_materialization.metadata["n_rendered"].value == 0
    assert event.asset_materialization.metadata["canny__-"].value == attached


def test_self_hosted_model_through_the_endpoint_resource(defake_home, chat_server):
    chat_server.state.served_model = QWEN2VL_ID
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "store": DefakeHomeFolder(home=str(defake_home)),
        "endpoint": ModelEndpoint(base_url=chat_server.base_url),
    }
    results = materialize_evaluation(instance, ["qwen2vl", "canny"], ["simple"], resources=resources)
    assert all(r.success for r in results)
    assert chat_server.state.n_chat == 16
    with duckdb.connect(str(HomeLayout(defake_home).warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT model, n_images, n_error FROM metrics WHERE scope = 'dataset' ORDER BY model"
        ).fetchall()
    assert rows == [("canny", 16, 0), ("qwen2vl", 16, 0)]


def test_cli_materialize_runs_on_the_local_instance(defake_home, tmp_path, monkeypatch, vllm_endpoint):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    result = CliRunner().invoke(main, ["materialize", "--model", "canny", "--model", "vllm", "--prompt", "simple"])
    assert result.exit_code == 0, result.output
    assert "canny__-.md" in result.output and "vllm__simple.md" in result.output
    # The top of each dataset's ranking and the leaderboard's path; not the whole file.
    assert "demo:\n  1. " in result.output and "leaderboard: " in result.output and "# Leaderboard" not in result.output
    assert len(result.stdout.splitlines()) < 15, result.stdout
    config = (tmp_path / "dagster_home" / "dagster.yaml").read_text()
    assert "enabled: false" in config
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    runs = instance.get_runs()
    # Named jobs, tagged with where they came from and, for a partition, the model and prompt.
    assert sorted(r.job_name for r in runs) == ["evaluate", "evaluate_baselines", "publish", "refresh_manifests"]
    assert all(r.tags["defake/source"] == "cli" for r in runs)
    [evaluate] = [r for r in runs if r.job_name == "evaluate"]
    assert evaluate.tags["defake/model"] == "vllm" and evaluate.tags["defake/prompt"] == "simple"


def test_cli_reports_bad_model_on_one_line(defake_home, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    result = CliRunner().invoke(main, ["materialize", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown model 'no-such-model'")


def add_extra_dataset(tmp_path, monkeypatch) -> None:
    """A second dataset, "extra" (one real and one fake image), defined in the working directory."""
    from PIL import Image

    for label in ("real", "fake"):
        (tmp_path / "extra" / label).mkdir(parents=True)
        Image.new("RGB", (32, 32), "white" if label == "fake" else "black").save(tmp_path / "extra" / label / "x.png")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "extra.toml").write_text('layout = "real_fake"\nroot = "../extra"\n')
    demo_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)


def test_dataset_selection_refreshes_only_that_dataset_and_keeps_other_rows(defake_home, tmp_path, monkeypatch):
    add_extra_dataset(tmp_path, monkeypatch)
    instance = dg.DagsterInstance.ephemeral()
    materialize_evaluation(instance, ["canny"], ["simple"], datasets=["demo"])
    layout = HomeLayout(defake_home)
    assert _tables(layout)["predictions"] == 16
    result = CliRunner().invoke(
        main, ["materialize", "-m", "canny", "-p", "simple", "-d", "extra"], env={"DAGSTER_HOME": str(tmp_path / "dh")}
    )
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(layout.warehouse), read_only=True) as con:
        per_dataset = dict(con.execute("SELECT dataset, n_images FROM metrics WHERE scope = 'dataset'").fetchall())
    assert per_dataset == {"demo": 16, "extra": 2}


def test_demo_report_links_resolve_and_chart_is_svg(defake_home):
    import re
    import xml.etree.ElementTree as ET

    import pandas as pd

    materialize_evaluation(dg.DagsterInstance.ephemeral(), ["canny"], ["simple"])
    layout = HomeLayout(defake_home)
    report = layout.report_file("canny", NO_PROMPT)
    targets = re.findall(r"\]\(<([^>]+)>\)", report.read_text())
    thumbs = [t for t in targets if t.startswith("thumbs/")]
    assert len(thumbs) == 16 and all((report.parent / t).is_file() for t in targets)
    csv = pd.read_csv(report.with_suffix(".csv"))
    assert list(csv.columns[:4]) == ["path", "label", "pred", "response"] and len(csv) == 16
    board = layout.leaderboard_file.read_text()
    assert "accuracy_demo.svg" in board
    svg = ET.parse(layout.reports_dir / "accuracy_demo.svg").getroot()
    assert svg.tag.endswith("svg") and "canny (baseline)" in ET.tostring(svg, encoding="unicode")


def test_report_metadata_carries_numeric_figures_per_dataset(defake_home):
    instance = dg.DagsterInstance.ephemeral()
    materialize_evaluation(instance, ["canny"], ["simple"])
    metadata = instance.get_latest_materialization_event(dg.AssetKey("model_reports")).asset_materialization.metadata
    assert metadata["canny__-/demo/accuracy"].value == pytest.approx(15 / 16)
    assert metadata["canny__-/demo/auc"].value > 0.9 and "canny__-/demo/cost_usd" in metadata


def test_cli_names_a_failed_gate_in_one_line_and_publishes_the_rest(defake_home, tmp_path, monkeypatch, chat_server):
    chat_server.state.faults.rate_400 = 1.0  # the endpoint refuses every image
    chat_server.state.served_model = QWEN2VL_ID
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("BASE_URL", chat_server.base_url)
    result = CliRunner().invoke(main, ["materialize", "-m", "qwen2vl", "-m", "canny", "-p", "simple"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: qwen2vl|simple on demo: quality gate failed: error rate 100.0% over the 20% limit; "
        "left off the leaderboard"
    ]
    layout = HomeLayout(defake_home)
    assert "report: " + str(layout.report_file("canny", NO_PROMPT)) in result.output
    assert not layout.report_file("qwen2vl", "simple").exists()


def test_a_deleted_manifest_is_named_in_the_metadata_and_the_cli(defake_home, tmp_path, monkeypatch):
    """A dataset whose manifest is gone drops out of the leaderboard, and says so."""
    add_extra_dataset(tmp_path, monkeypatch)
    env = {"DAGSTER_HOME": str(project_dagster_home(tmp_path))}
    assert CliRunner().invoke(main, ["materialize", "-m", "canny", "-p", "simple"], env=env).exit_code == 0
    layout = HomeLayout(defake_home)
    layout.manifest_file("extra").unlink()
    result = CliRunner().invoke(main, ["materialize", "-m", "canny", "-p", "simple", "-d", "demo"], env=env)
    assert result.exit_code == 0, result.output
    assert "warning: dataset 'extra' has no manifest" in result.output
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    metadata = instance.get_latest_materialization_event(dg.AssetKey("metrics")).asset_materialization.metadata
    assert metadata["missing_manifests"].value == "extra"


def test_a_partitions_data_version_is_a_function_of_its_own_rows(defake_home, vllm_endpoint):
    """A run that covers one partition and a run that covers three record the same data version
    for a partition whose rows did not change, so the warehouse does not rebuild for nothing."""
    instance = dg.DagsterInstance.ephemeral()
    materialize_evaluation(instance, ["vllm"], ["simple", "fusion", "common_sense"])
    key = dg.AssetKey("predictions")
    after_single = instance.event_log_storage.get_maximum_record_id()
    job = defs.resolve_job_def("evaluate")
    # A single run over a range of partitions, as a backfill with a single-run policy launches it.
    keys = [str(k) for k in model_prompt_partitions.get_partition_keys(dynamic_partitions_store=instance)]
    range_tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    result = job.execute_in_process(instance=instance, tags=range_tags)
    assert result.success
    records = instance.fetch_materializations(key, limit=20).records
    covered = {r.asset_materialization.partition for r in records if r.run_id == result.run_id}
    assert covered == {"vllm|simple", "vllm|fusion", "vllm|common_sense"}
    changed = instance.event_log_storage.get_updated_data_version_partitions(key, sorted(covered), after_single)
    assert changed == set()


def test_metadata_tables_keep_their_columns_and_figures_are_rounded(defake_home, vllm_endpoint):
    from markdown_it import MarkdownIt

    instance = dg.DagsterInstance.ephemeral()
    materialize_evaluation(instance, ["vllm"], ["simple"])
    predictions = instance.get_latest_materialization_event(dg.AssetKey("predictions")).asset_materialization
    html = MarkdownIt("commonmark").enable("table").render(predictions.metadata["partitions"].value)
    rows = [row.count("<td") for row in html.split("<tr>")[1:] if "<td" in row]
    assert rows == [6], html  # partition "vllm|simple", dataset, images, error rate, unknown rate, gate
    assert "<td>vllm|simple</td>" in html
    reports = instance.get_latest_materialization_event(dg.AssetKey("model_reports")).asset_materialization
    figures = [v.value for k, v in reports.metadata.items() if k.startswith("vllm__simple/")]
    assert figures and all(len(repr(f).split(".")[-1]) <= 6 for f in figures), figures


def test_a_preset_pointed_at_another_models_server_publishes_nothing_under_its_name(
    defake_home, tmp_path, monkeypatch, chat_server
):
    """Like a server that cannot be reached: one line naming what is served, and nothing is
    registered, run or published."""
    chat_server.state.served_models = [INTERNVL3_ID]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("BASE_URL", chat_server.base_url)
    result = CliRunner().invoke(main, ["materialize", "-m", "qwen2vl", "-p", "simple"])
    assert result.exit_code != 0 and chat_server.state.n_chat == 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith(("warning:", "error:"))]
    assert len(errors) == 1 and "lists 'OpenGVLab/InternVL3-8B', not a qwen2vl model" in errors[0], errors
    layout = HomeLayout(defake_home)
    assert not layout.report_file("qwen2vl", "simple").exists()
    assert not layout.leaderboard_file.exists() or "`qwen2vl`" not in layout.leaderboard_file.read_text()
    listing = CliRunner().invoke(main, ["models", "list"]).output
    assert re.search(r"^qwen2vl +qwen2vl +self_hosted +available$", listing, re.M), listing
