"""The published files stay right when a dataset holds files that cannot be read: every report
is rendered and agrees with the leaderboard and the warehouse."""

import os

import dagster as dg
import duckdb
import pytest
from PIL import Image

from defake_pipeline.cli.launch import materialize_evaluation
from defake_pipeline.records import NO_PROMPT
from defake_pipeline.warehouse.layout import HomeLayout

pytestmark = pytest.mark.timeout(180)


def test_unhashable_images_are_error_rows_in_a_report_that_matches_the_leaderboard(defake_home, tmp_path, monkeypatch):
    root = tmp_path / "odd"
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
        for i in range(5):  # 10 good images and 2 bad: within the gate's 20% error rate
            Image.new("RGB", (32, 32), (i * 40, 200 if label == "real" else 0, 90)).save(root / label / f"{i}.png")
    (root / "fake" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "pipe")
    (root / "fake" / "pipe.png").symlink_to(tmp_path / "pipe")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "odd.toml").write_text('layout = "real_fake"\nroot = "../odd"\n')
    monkeypatch.chdir(tmp_path)
    results = materialize_evaluation(dg.DagsterInstance.ephemeral(), ["canny"], ["simple"], datasets=["odd"])
    assert all(r.success for r in results)
    layout = HomeLayout(defake_home)
    with duckdb.connect(str(layout.warehouse), read_only=True) as con:
        n_images, n_error = con.execute(
            "SELECT n_images, n_error FROM metrics WHERE scope = 'dataset' AND dataset = 'odd'"
        ).fetchone()
    assert (n_images, n_error) == (12, 2)
    report = layout.report_file("canny", NO_PROMPT).read_text()
    assert "| odd | 12 |" in report
    assert "dangling.png" in report and "pipe.png" in report and "a named pipe" in report
    assert "| `canny` |" in layout.leaderboard_file.read_text()


def test_markdown_for_the_ui_is_cut_at_a_line_so_no_inlined_image_is_broken():
    from defake_pipeline.defs.reports import _METADATA_MD_LIMIT, _md_metadata

    image = "![chart](<data:image/svg+xml;base64," + "A" * 10_000 + ">)\n"
    text = _md_metadata(image * (_METADATA_MD_LIMIT // len(image) + 2), "/reports/x.md").value
    kept = text.split("\n_Truncated here")[0]
    assert kept.count("![chart]") == kept.count(">)") == _METADATA_MD_LIMIT // len(image)
    assert text.endswith("the full report is /reports/x.md._\n")


def test_a_report_record_cut_short_by_a_crash_has_every_report_rendered_again(defake_home, tmp_path, monkeypatch):
    """The record of what each report was rendered from (reports/.inputs.json) is a cache: cut
    short, as a crash or a full disk leaves it, it is rendered from again, never a traceback on
    every later publish."""
    monkeypatch.chdir(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert all(r.success for r in materialize_evaluation(instance, ["canny"], ["simple"]))
    layout = HomeLayout(defake_home)
    record = layout.reports_dir / ".inputs.json"
    whole = record.read_text()
    record.write_text(whole[: len(whole) // 2])
    report = layout.report_file("canny", NO_PROMPT)
    report.write_text("stale")
    assert all(r.success for r in materialize_evaluation(instance, ["canny"], ["simple"]))
    assert record.read_text() == whole and report.read_text().startswith("# ")
