"""Robustness sweeps: the ``kind:value`` grammar, deterministic perturbed images made once under
DEFAKE_HOME, and derived datasets carried through predictions, metrics and the leaderboard."""

import io
import shutil

import duckdb
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import REPO, project_dagster_home
from defake_pipeline.cli import main
from defake_pipeline.datasets.layouts import dataset_specs, load_dataset_spec
from defake_pipeline.errors import DatasetError
from defake_pipeline.imaging.perturb import Perturbation
from defake_pipeline.testing.openai_rules import image_pixels
from defake_pipeline.warehouse.layout import HomeLayout

SWEEP = '["jpeg:75", "resize:0.5", "crop:0.5", "blur:1.0"]'


@pytest.mark.parametrize(
    ("text", "slug"),
    [("jpeg:95", "jpeg-95"), ("JPEG:50", "jpeg-50"), ("resize:0.5", "resize-0.5"), ("crop:0.75", "crop-0.75"),
     ("blur:1.0", "blur-1"), ("webp:80", "webp-80")],
)  # fmt: skip
def test_the_grammar_names_each_perturbation(text, slug):
    assert Perturbation.parse(text).slug == slug


@pytest.mark.parametrize(
    ("entry", "says"),
    [("sharpen:2", "is not kind:value"), ("jpeg:150", "jpeg takes 1 to 100"), ("jpeg:high", "takes an integer"),
     ("resize:0", "resize takes 0.05 to 4"), ("blur", "is not kind:value")],
)  # fmt: skip
def test_a_bad_perturbation_is_one_line_naming_the_dataset_file(tmp_path, entry, says):
    file = tmp_path / "sweep.toml"
    file.write_text(f'layout = "real_fake"\nroot = "."\nperturbations = ["jpeg:75", "{entry}"]\n')
    with pytest.raises(DatasetError) as caught:
        load_dataset_spec(file)
    message = str(caught.value)
    assert message.startswith(str(file)) and says in message and "\n" not in message


def test_a_single_perturbation_set_by_hand_is_checked_too(tmp_path):
    file = tmp_path / "one.toml"
    file.write_text('root = "."\nperturbation = "jpeg:0"\n')
    with pytest.raises(DatasetError, match="jpeg takes 1 to 100"):
        load_dataset_spec(file)


def test_a_perturbation_listed_twice_is_refused(tmp_path):
    file = tmp_path / "twice.toml"
    file.write_text('root = "."\nperturbations = ["blur:1", "blur:1.0"]\n')
    with pytest.raises(DatasetError, match="listed twice: blur-1"):
        load_dataset_spec(file)


def test_each_perturbation_is_deterministic_and_does_what_it_says():
    source = next((REPO / "demo" / "real").iterdir()).read_bytes()
    with Image.open(io.BytesIO(source)) as img:
        width, height = img.size
    for text, fmt, size in [
        ("jpeg:50", "JPEG", (width, height)),
        ("webp:80", "WEBP", (width, height)),
        ("resize:0.5", "PNG", (round(width / 2), round(height / 2))),
        ("crop:0.5", "PNG", (round(width / 2), round(height / 2))),
        ("blur:2", "PNG", (width, height)),
    ]:
        perturbation = Perturbation.parse(text)
        made = perturbation.apply(source)
        assert made == perturbation.apply(source), text  # the same bytes every time
        with Image.open(io.BytesIO(made)) as img:
            assert (img.format, img.size) == (fmt, size), text


def sweep_project(tmp_path, monkeypatch):
    """A project whose demo dataset (a copy of the shipped one) lists four perturbations."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "demo" / "real", project / "images" / "real")
    shutil.copytree(REPO / "demo" / "fake", project / "images" / "fake")
    (project / "datasets").mkdir()
    (project / "datasets" / "demo.toml").write_text(f'root = "../images"\nperturbations = {SWEEP}\n')
    monkeypatch.chdir(project)
    monkeypatch.setenv("DAGSTER_HOME", str(project_dagster_home(tmp_path)))
    return project


def made_files(home):
    return sorted(p for p in (home / "derived").rglob("*") if p.is_file())


def test_an_enlargement_over_the_pixel_limit_is_refused_before_it_is_made():
    """A 160 KB PNG of 7000×7000, resized by 4, would be 784 million pixels: several GB of memory
    and tens of seconds for an image the probe then refuses as a decompression bomb."""
    from defake_pipeline.imaging.probe import MAX_PIXELS

    source = io.BytesIO()
    Image.new("RGB", (7000, 7000), (10, 20, 30)).save(source, "PNG")
    with pytest.raises(ValueError, match=r"resized to 28000x28000 pixels is over the limit"):
        Perturbation.parse("resize:4").apply(source.getvalue())
    assert 28000 * 28000 > MAX_PIXELS >= 7000 * 7000


def test_a_sweep_runs_end_to_end_and_a_second_run_makes_nothing_and_sends_nothing(
    defake_home, tmp_path, monkeypatch, vllm_endpoint
):
    project = sweep_project(tmp_path, monkeypatch)
    keys = ["demo", "demo~jpeg-75", "demo~resize-0.5", "demo~crop-0.5", "demo~blur-1"]
    assert [s.key for s in dataset_specs()] == keys
    args = ["materialize", "-m", "vllm", "-m", "canny", "-p", "simple"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    derived = made_files(defake_home)
    assert len(derived) == 4 * 16 and vllm_endpoint.state.n_chat == 5 * 16
    layout = HomeLayout(defake_home)
    with duckdb.connect(str(layout.warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT dataset, model, n_real, n_fake, n_error FROM metrics WHERE scope = 'dataset' ORDER BY ALL"
        ).fetchall()
        sources = con.execute("SELECT DISTINCT rel_path FROM image_manifest WHERE dataset = 'demo~blur-1'").fetchall()
    # Labels are inherited; each derived row names the base image it was made from.
    assert len(rows) == 10 and all(r[2:] == (8, 8, 0) for r in rows)
    assert sorted(s[0].split("/")[0] for s in sources) == ["fake"] * 8 + ["real"] * 8
    board = layout.leaderboard_file.read_text()
    assert "**Robustness**" in board and "| none | blur-1 | crop-0.5 | jpeg-75 | resize-0.5 |" in board
    assert (layout.reports_dir / "robustness_demo.svg").exists()

    stamps = {p: p.stat().st_mtime_ns for p in derived}
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert {p: p.stat().st_mtime_ns for p in made_files(defake_home)} == stamps
    assert vllm_endpoint.state.n_chat == 5 * 16  # every answer from the journal
    assert project.exists()


def test_an_image_that_cannot_be_perturbed_keeps_its_row_with_the_reason(defake_home, tmp_path, monkeypatch):
    project = sweep_project(tmp_path, monkeypatch)
    (project / "images" / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = CliRunner().invoke(main, ["materialize", "-m", "canny", "-p", "simple"])
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(HomeLayout(defake_home).warehouse), read_only=True) as con:
        errors = con.execute(
            "SELECT dataset, probe_error FROM image_manifest WHERE rel_path = 'fake/broken.png' ORDER BY dataset"
        ).fetchall()
    assert len(errors) == 5 and errors[0][0] == "demo" and "not a readable image" in errors[0][1]
    assert all("cannot make its" in e for _d, e in errors[1:]), errors


def test_infer_on_a_derived_dataset_sends_the_perturbed_images(defake_home, tmp_path, monkeypatch, vllm_endpoint):
    sweep_project(tmp_path, monkeypatch)
    result = CliRunner().invoke(main, ["infer", "-m", "vllm", "-p", "simple", "--dataset", "demo~crop-0.5", "-o", "c"])
    assert result.exit_code == 0, result.output
    sent = set()
    for body in vllm_endpoint.state.bodies:
        for part in body["messages"][-1]["content"]:
            if part.get("type") == "image_url":
                sent.add(image_pixels(part["image_url"]["url"]))
    cropped = set()
    for folder in ("real", "fake"):
        for path in (REPO / "demo" / folder).iterdir():
            with Image.open(path) as img:
                cropped.add((round(img.width / 2), round(img.height / 2)))
    assert len(vllm_endpoint.state.bodies) == 16 and sent == cropped  # every image sent is the cropped copy


def test_the_results_section_has_a_robustness_table(defake_home, tmp_path, monkeypatch):
    sweep_project(tmp_path, monkeypatch)
    assert CliRunner().invoke(main, ["materialize", "-m", "canny", "-p", "simple"]).exit_code == 0
    result = CliRunner().invoke(main, ["paper"])
    assert result.exit_code == 0, result.output
    table = (defake_home / "reports" / "paper_robustness.csv").read_text().splitlines()
    assert table[0].startswith("dataset,perturbation,model,prompt,n_valid,accuracy")
    assert sorted(line.split(",")[1] for line in table[1:]) == ["blur-1", "crop-0.5", "jpeg-75", "resize-0.5"]
    assert "## Robustness" in (defake_home / "reports" / "paper.md").read_text()


def test_a_copy_that_cannot_be_made_is_an_error_never_the_sources_answer(defake_home, tmp_path, monkeypatch):
    """The sources are fine, but their jpeg-75 copies cannot be written (a file stands where the
    folder goes): that dataset is all errors, and the source's answers are not published under its name."""
    sweep_project(tmp_path, monkeypatch)
    (defake_home / "derived").mkdir(parents=True)
    (defake_home / "derived" / "jpeg-75").write_text("not a folder")
    assert CliRunner().invoke(main, ["materialize", "-m", "canny", "-p", "simple"]).exit_code == 0
    with duckdb.connect(str(HomeLayout(defake_home).warehouse), read_only=True) as con:
        counts = dict(
            con.execute(
                "SELECT dataset, n_error FROM metrics WHERE scope = 'dataset' AND dataset IN ('demo', 'demo~jpeg-75')"
            ).fetchall()
        )
        hashed = con.execute("SELECT count(sha256) FROM image_manifest WHERE dataset = 'demo~jpeg-75'").fetchone()
    assert hashed == (0,) and counts["demo~jpeg-75"] == 16 and counts["demo"] == 0
