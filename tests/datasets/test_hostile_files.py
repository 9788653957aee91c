"""Files real datasets hold: named pipes, devices, huge files, symlinked folders and symlink
loops. None may hang a scan or exhaust memory, and the manifest and the sensors' fingerprint
always see the same files."""

import os
import resource

import pandas as pd
import pytest
from PIL import Image

from defake_pipeline.datasets.fingerprints import dataset_fingerprint
from defake_pipeline.datasets.layouts import DatasetSpec, list_images, load_dataset_spec
from defake_pipeline.datasets.manifest import build_manifest
from defake_pipeline.errors import DatasetError
from defake_pipeline.imaging.probe import MAX_IMAGE_BYTES, probe_image

pytestmark = pytest.mark.timeout(60)  # a hang is a failure, not a stuck suite


def image(path, color="navy"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    image(root / "real" / "a.png")
    image(root / "fake" / "b.png", "olive")
    return DatasetSpec(name="hostile", layout="real_fake", root=root)


def errors_by_name(manifest):
    return {os.path.basename(p): e for p, e in zip(manifest["path"], manifest["probe_error"], strict=True)}


def test_a_named_pipe_and_devices_are_named_errors_not_reads(dataset, tmp_path):
    fake = dataset.root / "fake"
    os.mkfifo(tmp_path / "pipe")
    (fake / "pipe.png").symlink_to(tmp_path / "pipe")
    os.mkfifo(fake / "bare-pipe.png")
    (fake / "zero.png").symlink_to("/dev/zero")
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    errors = errors_by_name(build_manifest(dataset))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024 < 100
    assert errors["pipe.png"].startswith("not a regular file (a named pipe)")
    assert errors["bare-pipe.png"].startswith("not a regular file (a named pipe)")
    assert errors["zero.png"].startswith("not a regular file (a character device)")
    assert pd.isna(errors["a.png"]) and pd.isna(errors["b.png"])
    dataset_fingerprint(dataset)  # the sensor's scan stats; it never opens them


def test_a_file_over_the_size_limit_is_not_read(tmp_path):
    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no disk used
    assert probe_image(huge).error == f"over the {MAX_IMAGE_BYTES >> 20} MB limit for one image"


def test_a_csv_dataset_whose_csv_is_a_pipe_is_one_dataset_error(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")
    spec = DatasetSpec(name="piped", layout="csv", csv=tmp_path / "labels.csv")
    with pytest.raises(DatasetError, match=r"labels\.csv: the dataset's CSV is not a regular file"):
        list_images(spec)
    with pytest.raises(DatasetError, match="not a regular file"):
        dataset_fingerprint(spec)  # the sensor logs it and goes on with the other datasets


def test_a_symlinked_generator_folder_is_in_the_manifest_and_the_fingerprint(dataset, tmp_path):
    other_disk = tmp_path / "otherdisk" / "sdxl"
    image(other_disk / "s1.png", "red")
    image(other_disk / "s2.png", "blue")
    (dataset.root / "fake" / "sdxl").symlink_to(other_disk)
    manifest = build_manifest(dataset)
    assert sorted(manifest["subset"]) == ["default", "default", "sdxl", "sdxl"]
    before = dataset_fingerprint(dataset)
    image(other_disk / "s3.png", "green")
    assert dataset_fingerprint(dataset) != before
    assert len(build_manifest(dataset)) == 5


def test_the_fingerprint_sees_the_files_the_listing_reads_and_no_others(dataset, tmp_path):
    """A dataset whose root is the project's own folder holds DEFAKE_HOME, where every run writes
    thumbnails: files the listing never reads change nothing, and each file it reads does. A CSV's
    images are seen wherever they live, not only beside the CSV."""
    before = dataset_fingerprint(dataset)
    image(dataset.root / "outputs" / "reports" / "thumbs" / "t.png")
    image(dataset.root / "notes.png")
    assert dataset_fingerprint(dataset) == before
    image(dataset.root / "fake" / "new.png", "teal")
    assert dataset_fingerprint(dataset) != before

    far = image(tmp_path / "elsewhere" / "a.png")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "labels.csv").write_text("path,label\n../elsewhere/a.png,real\n")
    listed = DatasetSpec(name="listed", layout="csv", csv=tmp_path / "lists" / "labels.csv")
    before = dataset_fingerprint(listed)
    image(tmp_path / "lists" / "unlisted.png")
    assert dataset_fingerprint(listed) == before
    Image.new("RGB", (20, 12), "red").save(far)
    changed = dataset_fingerprint(listed)
    assert changed != before
    (tmp_path / "lists" / "labels.csv").write_text("path,label\n../elsewhere/a.png,fake\n")
    assert dataset_fingerprint(listed) != changed  # a label the CSV changed


def test_a_symlink_loop_is_named_once_and_the_rest_still_counts(dataset):
    (dataset.root / "fake" / "loop").symlink_to(".")  # fake/loop -> fake
    notes: list[str] = []
    manifest = build_manifest(dataset, notes=notes)
    assert len(manifest) == 2 and manifest["probe_error"].isna().all()
    assert len(notes) == 1 and "already walked" in notes[0] and "loop" in notes[0]
    assert dataset_fingerprint(dataset)


def labels_by_content(manifest):
    return manifest.groupby("sha256")["label"].agg(lambda labels: sorted(set(labels))).to_dict()


def test_a_link_into_the_other_labels_folder_lists_no_image_under_both_labels(dataset):
    """A link from real/ to the dataset's root, or to a fake image, would list fake images as
    real too: the same content under both labels. Each link is named once and skipped, and
    the sensors' fingerprint sees no more than the listing."""
    before = dataset_fingerprint(dataset)
    (dataset.root / "real" / "loop").symlink_to("..")
    (dataset.root / "real" / "alias.png").symlink_to("../fake/b.png")
    notes: list[str] = []
    manifest = build_manifest(dataset, notes=notes)
    assert sorted(manifest["label"]) == [0, 1] and all(len(v) == 1 for v in labels_by_content(manifest).values())
    crossings = [note for note in notes if "the folder of the other label" in note]
    assert sorted(note.split(":")[0].rsplit("/", 1)[-1] for note in crossings) == ["alias.png", "fake"], notes
    assert dataset_fingerprint(dataset) == before


def test_a_link_into_a_folder_of_the_other_label_in_generator_folders_is_skipped(tmp_path):
    root = tmp_path / "bench"
    image(root / "sd" / "0_real" / "a.png")
    image(root / "sd" / "1_fake" / "b.png", "olive")
    (root / "sd" / "0_real" / "more").symlink_to("../1_fake")
    spec = DatasetSpec(name="gens", layout="generator_folders", root=root)
    notes: list[str] = []
    manifest = build_manifest(spec, notes=notes)
    assert sorted(manifest["label"]) == [0, 1] and all(len(v) == 1 for v in labels_by_content(manifest).values())
    assert (
        len(notes) == 1 and "0_real/more: leads into" in notes[0] and "1_fake, a folder of the other label" in notes[0]
    )


def test_label_folders_that_overlap_are_one_dataset_error(tmp_path):
    image(tmp_path / "all" / "b.png", "olive")
    image(tmp_path / "all" / "real" / "a.png")
    spec = DatasetSpec(
        name="nested", layout="image_folders", real_dir=tmp_path / "all" / "real", fake_dir=tmp_path / "all"
    )
    with pytest.raises(DatasetError, match="overlap; each label needs its own folder"):
        list_images(spec)


def test_an_image_listed_under_both_labels_is_said_on_the_terminal(tmp_path, monkeypatch):
    """A CSV that lists one file as real and as fake: the run goes on (the no_label_leak check
    fails), and the terminal says which image, as the figures count it under both labels."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    image(tmp_path / "imgs" / "a.png")
    image(tmp_path / "imgs" / "b.png", "olive")
    (tmp_path / "labels.csv").write_text("path,label\nimgs/a.png,real\nimgs/a.png,fake\nimgs/b.png,fake\n")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "twice.toml").write_text('layout = "csv"\ncsv = "../labels.csv"\n')
    monkeypatch.chdir(tmp_path)
    env = {"DAGSTER_HOME": str(tmp_path / "dh"), "DEFAKE_HOME": str(tmp_path / "outputs")}
    result = CliRunner().invoke(main, ["materialize", "-m", "canny"], env=env)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "labelled both real and fake" in line]
    assert len(warned) == 1 and "dataset twice: 1 image(s)" in warned[0] and "imgs/a.png" in warned[0], result.output


def test_a_deeply_nested_dataset_definition_is_one_dataset_error(tmp_path):
    file = tmp_path / "deep.toml"
    file.write_text("root = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DatasetError, match=r"deep\.toml: invalid TOML"):
        load_dataset_spec(file)


def test_project_files_that_are_pipes_devices_or_huge_are_errors_naming_them(tmp_path, monkeypatch):
    """A dataset definition, a prompt or models.toml that is a named pipe (which would block
    every command and sensor that lists the project), a device or a huge file: one error naming
    the file and why, read no further."""
    from defake_pipeline.endpoints.registry import model_table
    from defake_pipeline.errors import ModelConfigError, PromptError
    from defake_pipeline.prompting.spec import load_prompt

    for folder in ("datasets", "prompts"):
        (tmp_path / folder).mkdir()
    os.mkfifo(tmp_path / "datasets" / "piped.toml")
    (tmp_path / "prompts" / "zeros.json").symlink_to("/dev/zero")
    (tmp_path / "prompts" / "huge.json").write_text('{"x": "' + "a" * (2 << 20) + '"}')
    os.mkfifo(tmp_path / "models.toml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"piped\.toml: not a regular file \(a named pipe\)"):
        load_dataset_spec(tmp_path / "datasets" / "piped.toml")
    with pytest.raises(PromptError, match=r"zeros\.json: not a regular file \(a character device\)"):
        load_prompt(tmp_path / "prompts" / "zeros.json")
    with pytest.raises(PromptError, match=r"huge\.json: over the 1 MB limit for a project file"):
        load_prompt(tmp_path / "prompts" / "huge.json")
    with pytest.raises(ModelConfigError, match=r"models\.toml: not a regular file \(a named pipe\)"):
        model_table()


def test_materialize_names_a_dataset_whose_csv_is_a_pipe_and_publishes_the_others(defake_home, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from defake_pipeline.cli import main
    from defake_pipeline.warehouse.layout import HomeLayout

    for label in ("real", "fake"):
        for i in range(3):
            image(tmp_path / "good" / label / f"{i}.png", (i * 60, 40 if label == "real" else 200, 10))
    os.mkfifo(tmp_path / "labels.csv")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "good.toml").write_text('layout = "real_fake"\nroot = "../good"\n')
    (tmp_path / "datasets" / "piped.toml").write_text('layout = "csv"\ncsv = "../labels.csv"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["materialize", "-m", "canny"], env={"DAGSTER_HOME": str(tmp_path / "dh")})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Stack Trace" not in result.output
    assert (
        "dataset piped: not refreshed: " in result.output
        and "labels.csv: the dataset's CSV is not a regular" in result.output
    )
    layout = HomeLayout(defake_home)
    assert len(pd.read_parquet(layout.manifest_file("good"))) == 6
    board = layout.leaderboard_file.read_text(encoding="utf-8")
    assert "| 6 | 50.0%" in board and "[report](<canny__-.md>)" in board  # the good dataset is ranked


def test_materialize_with_no_readable_dataset_ends_on_the_cause(defake_home, tmp_path, monkeypatch):
    """A first project whose only dataset's folder is missing: the last line says so, and does
    not send the user to materialize the manifest they just asked for."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "gone.toml").write_text('layout = "real_fake"\nroot = "../nowhere"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["materialize", "-m", "canny"], env={"DAGSTER_HOME": str(tmp_path / "dh")})
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: no dataset could be read: ") and "nowhere/real does not exist" in last, last
    assert "materialize image_manifest first" not in result.output


def test_run_logs_show_escape_sequences_in_file_names_as_text(tmp_path, monkeypatch):
    """The runs' log lines on the terminal (``mllmdf materialize``, and the daemon's runs under
    ``dagster dev``) name files; a name's escape sequences are shown, never acted on."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    for label in ("real", "fake"):
        image(tmp_path / "data" / label / "a.png", "navy" if label == "real" else "olive")
    folder = tmp_path / "data" / "fake" / "d\x1b]0;title\x07"
    folder.mkdir()
    (folder / "loop\x1b[5m").symlink_to("..")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "data.toml").write_text('layout = "real_fake"\nroot = "../data"\n')
    monkeypatch.chdir(tmp_path)
    env = {"DAGSTER_HOME": str(tmp_path / "dh"), "DEFAKE_HOME": str(tmp_path / "outputs")}
    result = CliRunner().invoke(main, ["materialize", "-m", "canny"], env=env, color=True)
    assert result.exit_code == 0, result.output
    assert "already walked" in result.output
    assert "\x1b" not in result.output and "d\\x1b]0;title\\x07/loop\\x1b[5m" in result.output


def test_a_same_size_same_time_replacement_is_found_by_rehash(defake_home, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from defake_pipeline.cli import main
    from defake_pipeline.warehouse.layout import HomeLayout

    root = tmp_path / "swap"
    for label in ("real", "fake"):
        for i in range(3):
            image(root / label / f"{i}.png", (i * 60, 40 if label == "real" else 200, 10))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "swap.toml").write_text('layout = "real_fake"\nroot = "../swap"\n')
    monkeypatch.chdir(tmp_path)
    env = {"DAGSTER_HOME": str(tmp_path / "dagster_home")}
    args = ["materialize", "-m", "canny", "-d", "swap"]
    assert CliRunner().invoke(main, args, env=env).exit_code == 0
    target = root / "fake" / "0.png"
    before = target.stat()
    image(tmp_path / "other.png", (7, 7, 7)).replace(target)
    assert target.stat().st_size == before.st_size  # same pixels size, same encoder: same length
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    manifest = HomeLayout(defake_home).manifest_file("swap")
    old_sha = set(pd.read_parquet(manifest)["sha256"])
    assert CliRunner().invoke(main, args, env=env).exit_code == 0
    assert set(pd.read_parquet(manifest)["sha256"]) == old_sha  # what size + mtime cannot see
    result = CliRunner().invoke(main, [*args, "--rehash"], env=env)
    assert result.exit_code == 0, result.output
    assert len(set(pd.read_parquet(manifest)["sha256"]) - old_sha) == 1


def test_a_corrupt_image_error_names_the_file_not_a_buffer(tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg" * 10)
    error = probe_image(bad).error
    assert error == "not a readable image: cannot identify image file corrupt.jpg", error


def test_a_large_image_under_the_limit_prints_no_pillow_warning(tmp_path, chat_server):
    """Over Pillow's MAX_IMAGE_PIXELS and under twice that, an image is accepted: Pillow's
    DecompressionBombWarning at each later open of it would only break the progress bar."""
    import subprocess
    import sys
    from pathlib import Path

    side = int((Image.MAX_IMAGE_PIXELS * 1.1) ** 0.5)
    for label in ("real", "fake"):
        (tmp_path / label).mkdir()
        Image.new("L", (side, side)).save(tmp_path / label / "large.png")
    env = {**os.environ, "BASE_URL": chat_server.base_url, "DEFAKE_HOME": str(tmp_path / "out")}
    env.pop("PYTHONWARNINGS", None)
    mllmdf = str(Path(sys.executable).parent / "mllmdf")
    args = [mllmdf, "infer", "-m", "vllm", "--real_dir", "real", "--fake_dir", "fake"]
    ran = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "on 2 scored of 2 rows" in ran.stderr and "Warning" not in ran.stderr, ran.stderr
