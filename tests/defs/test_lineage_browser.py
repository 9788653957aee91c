"""The lineage UI, checked in real headless Chromium (Debian's, installed by .ci/run) against `dagster dev`."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO
from defake_pipeline.testing.live import LiveDagster, make_project

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
ASSETS = ["image_manifest", "baseline_predictions", "predictions", "metrics", "model_reports", "leaderboard"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory) -> Iterator[LiveDagster]:
    """One ``dagster dev`` for the module, on a copy of the demo after `make demo`'s run."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("ui")
    project = make_project(root / "project")
    # A sweep of four perturbations and a dataset with subsets: the leaderboard then draws every
    # kind of chart (accuracy, robustness, subset matrix, ROC and reliability).
    with (project / "datasets" / "demo.toml").open("a") as toml:
        toml.write('perturbations = ["jpeg:75", "resize:0.5", "crop:0.5", "blur:1.0"]\n')
    lines = ["path,label,subset"] + [
        f"../images/{folder}/{image.name},{folder},{folder}-{i % 2}"
        for folder in ("real", "fake")
        for i, image in enumerate(sorted((project / "images" / folder).iterdir()))
    ]
    (project / "datasets" / "subsets.csv").write_text("\n".join(lines) + "\n")
    (project / "datasets" / "subsets.toml").write_text('layout = "csv"\ncsv = "subsets.csv"\n')
    live = LiveDagster(project, root, env={"DEFAKE_BATCH_POLL_S": "5"})
    live.cli("materialize", "--model", "canny", "--prompt", "simple")
    live.start()
    # A page read while a run publishes is re-drawn under the test (the markdown it opened
    # closes): the pages are read once the instance is at rest.
    try:
        live.wait_quiet(live.started)
        yield live
    finally:
        live.stop()


_CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_dagster_dev_after_a_cli_run_launches_nothing(dagster_dev):
    """The daemon's first look finds the images the CLI run refreshed: nothing new, no run."""
    assert [r for r in dagster_dev.runs() if r["creationTime"] >= dagster_dev.started] == []


def test_global_lineage_draws_every_asset(dagster_dev):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=_CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{dagster_dev.url}/asset-groups", wait_until="domcontentloaded")
        graph = page.locator("svg, [data-testid]").first
        graph.wait_for(timeout=60_000)
        for asset in ASSETS:
            # Each asset is drawn as a node in the graph (not only listed in the sidebar).
            page.get_by_text(asset, exact=True).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        # A first visit from 127.0.0.1 gets no community dialog over the page (nux disabled in
        # the instance's dagster.yaml).
        community_dialogs = page.get_by_text("Join the Dagster community").count()
        page.screenshot(path=str(ARTIFACTS / "lineage.png"))
        nodes = page.evaluate(
            """(names) => names.filter(n => [...document.querySelectorAll('*')].filter(
                   e => e.childElementCount === 0 && e.textContent.trim() === n).length >= 2)""",
            ASSETS,
        )
        browser.close()
    # Sidebar list plus graph node: each name is drawn at least twice.
    assert sorted(nodes) == sorted(ASSETS)
    assert community_dialogs == 0
    assert (ARTIFACTS / "lineage.png").stat().st_size > 10_000


def test_report_markdown_in_the_ui_renders_its_images(dagster_dev):
    """The markdown attached to model_reports and leaderboard shows its thumbnails and chart."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    loaded = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=_CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        # The first-visit community dialog may open at any moment and cover what is clicked:
        # Playwright dismisses it whenever it shows.
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
        for asset, kind in (("leaderboard", "svg+xml"), ("model_reports", "jpeg")):
            page.goto(f"{dagster_dev.url}/assets/{asset}", wait_until="domcontentloaded")
            page.get_by_text("[Show Markdown]").first.click(timeout=90_000)
            page.locator(f'img[src^="data:image/{kind}"]').first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ARTIFACTS / f"ui_{asset}.png"), full_page=True)
            # Decoded images only: naturalWidth is 0 for a picture the browser could not load.
            loaded[asset] = page.evaluate(
                """[...document.querySelectorAll('img[src^="data:image/"]')].map(i => [i.alt, i.naturalWidth])"""
            )
        browser.close()
    (ARTIFACTS / "ui_images.json").write_text(json.dumps(loaded, indent=1))
    charts = {alt.split(" on ")[0]: width for alt, width in loaded["leaderboard"]}
    assert all(width > 100 for _alt, width in loaded["leaderboard"]), loaded["leaderboard"]
    assert set(charts) == {
        "Accuracy with 95% intervals",  # one a dataset: 2 and the 4 perturbed copies
        "Accuracy by perturbation",
        "Accuracy per subset",
        "ROC curves and reliability diagrams",
    }
    assert len(loaded["leaderboard"]) == 6 + 1 + 1 + 6, [alt for alt, _w in loaded["leaderboard"]]
    # The report: its ROC charts (one a dataset) and thumbnails of the first wrong and correct images.
    widths = [width for _alt, width in loaded["model_reports"]]
    assert len(widths) > 6 + 7 and all(w > 0 for w in widths), loaded["model_reports"]
