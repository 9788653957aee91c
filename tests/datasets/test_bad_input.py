"""Bad images and bad prompts: each is a clear per-image (or per-file) error, and nothing stops the run."""

import io
import json
import os
import sys

import pandas as pd
import pytest
from PIL import Image

from defake_pipeline.datasets.layouts import load_dataset_spec
from defake_pipeline.datasets.manifest import build_manifest, jobs_from_manifest
from defake_pipeline.endpoints.baselines import canny_detect
from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator
from defake_pipeline.evaluation.journal import ResponseJournal
from defake_pipeline.imaging.encode import EncodingPolicy, encode_data_url, open_rgb
from defake_pipeline.imaging.probe import probe_image
from defake_pipeline.prompting.spec import find_prompt, load_prompt
from defake_pipeline.records import NO_PROMPT


def save(img, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


@pytest.fixture
def messy(tmp_path):
    """A dataset folder holding every kind of bad or awkward file, plus good ones."""
    real, fake = tmp_path / "data" / "real", tmp_path / "data" / "fake"
    save(Image.new("RGB", (64, 48), "navy"), real / "good.jpg")
    save(Image.new("RGB", (64, 48), "olive"), fake / "good.png")
    (real / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buf, format="JPEG")
    (real / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buf, format="PNG")
    (fake / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (fake / "notes.jpg").write_text("this is a text file")
    save(Image.new("RGB", (40, 40), "teal"), fake / "liar.png", format="JPEG")
    save(Image.new("1", (20000, 20000)), fake / "bomb.png")
    save(Image.new("CMYK", (40, 40), (10, 200, 30, 0)), real / "cmyk.jpg")
    save(Image.new("I;16", (40, 40), 40000), real / "deep16.png")
    save(Image.new("P", (40, 40), 3), real / "palette.png")
    save(Image.new("RGBA", (40, 40), (255, 0, 0, 90)), fake / "alpha.png")
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    frames[0].save(fake / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(fake / "anim.webp", save_all=True, append_images=frames[1:])
    rotated = Image.new("RGB", (60, 30), "white")
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    rotated.save(real / "rotated.jpg", exif=exif)
    (real / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00heicmif1" + b"\x00" * 64)
    (real / "link.jpg").symlink_to(real / "missing.jpg")
    (fake / "loop_a.jpg").symlink_to(fake / "loop_b.jpg")
    (fake / "loop_b.jpg").symlink_to(fake / "loop_a.jpg")
    nested = real / ("deep_" + "x" * 200) / ("deeper_" + "y" * 200) / ("deepest_" + "z" * 200)
    save(Image.new("RGB", (20, 20), "gray"), nested / "long.jpg")
    save(Image.new("RGB", (20, 20), "pink"), real / "naïve-名前.jpg")
    odd = os.fsdecode(b"bad\xff\xfename.jpg")
    save(Image.new("RGB", (20, 20), "gold"), real / odd)
    (real / ".DS_Store").write_bytes(b"\x00\x01")
    (real / "Thumbs.db").write_bytes(b"\x00\x01")
    save(Image.new("RGB", (20, 20)), real / ".hidden.jpg")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "messy.toml").write_text('layout = "real_fake"\nroot = "../data"\n')
    return load_dataset_spec(tmp_path / "datasets" / "messy.toml")


def test_every_bad_file_is_a_manifest_row_with_a_clear_error(messy):
    manifest = build_manifest(messy)
    errors = dict(zip(manifest["rel_path"].map(lambda p: p.split("/")[-1]), manifest["probe_error"], strict=True))
    assert "empty file" in errors["empty.jpg"]
    assert "truncated" in errors["truncated.jpg"].lower() and "truncated" in errors["truncated.png"].lower()
    assert "not a readable image" in errors["notes.jpg"]
    assert "decompression bomb" in errors["bomb.png"]
    assert "HEIC is not supported" in errors["photo.heic"]
    assert "broken or looping symlink" in errors["link.jpg"]
    assert "broken or looping symlink" in errors["loop_a.jpg"] and "broken or looping symlink" in errors["loop_b.jpg"]
    assert "not valid UTF-8" in errors["bad\ufffd\ufffdname.jpg"]
    for fine in (
        "good.jpg",
        "good.png",
        "liar.png",
        "cmyk.jpg",
        "deep16.png",
        "palette.png",
        "alpha.png",
        "anim.gif",
        "anim.webp",
        "rotated.jpg",
        "long.jpg",
        "naïve-名前.jpg",
    ):
        assert errors[fine] is None or errors[fine] != errors[fine], (fine, errors[fine])
    liar = manifest[manifest["rel_path"].str.endswith("liar.png")].iloc[0]
    assert liar.format == "JPEG"
    names = set(errors)
    assert not names & {".DS_Store", "Thumbs.db", ".hidden.jpg"}  # junk and hidden files are ignored


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions(tmp_path):
    path = save(Image.new("RGB", (8, 8)), tmp_path / "locked.jpg")
    path.chmod(0)
    assert "unreadable" in probe_image(path).error


def test_awkward_but_valid_images_are_decoded_upright_and_encoded(messy):
    root = messy.root
    rotated = open_rgb((root / "real" / "rotated.jpg").read_bytes())
    assert rotated.size == (30, 60)  # EXIF orientation applied
    first = open_rgb((root / "fake" / "anim.gif").read_bytes())
    assert first.getpixel((0, 0)) == (255, 0, 0)  # the first frame
    for name in ("real/cmyk.jpg", "real/deep16.png", "real/palette.png", "fake/alpha.png", "fake/anim.webp"):
        data = (root / name).read_bytes()
        assert encode_data_url(data, EncodingPolicy(max_side=16)).startswith("data:image/")
        canny_detect(data)  # the baseline reads them too


def test_bad_images_become_error_rows_and_the_rest_are_answered(messy, tmp_path):
    jobs = list(jobs_from_manifest(build_manifest(messy)))
    journal = ResponseJournal(tmp_path / "j.sqlite")
    preds = evaluate_sync(jobs, make_evaluator(get_model("canny"), None, journal))
    journal.close()
    by_name = {p.path.split("/")[-1]: p for p in preds}
    assert by_name["truncated.jpg"].error and by_name["truncated.jpg"].pred == -1
    assert by_name["good.jpg"].error is None and by_name["good.jpg"].pred in (0, 1)
    assert sum(p.error is None for p in preds) == 12


def test_infer_writes_bad_images_as_pred_minus_one_with_the_error(messy, tmp_path):
    import subprocess
    from pathlib import Path

    import pandas as pd

    mllmdf = str(Path(sys.executable).with_name("mllmdf"))
    env = {**os.environ, "DEFAKE_HOME": str(tmp_path / "out")}
    subprocess.run(
        [mllmdf, "infer", "--model", "canny", "--dataset", str(messy.root), "--count", "0", "-o", "messy"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    frame = pd.read_csv(tmp_path / "out" / "messy.csv")
    bad = frame[frame["error"].notna()]
    # Here the non-UTF-8 name is read from disk directly, so it gets an answer; only its stored name is mended.
    assert len(frame) == len(build_manifest(messy)) and len(bad) == len(frame) - 13
    assert (bad["pred"] == -1).all()
    assert frame["path"].str.contains("bad\ufffd\ufffdname.jpg").any()


PROMPT = {
    "format_version": "3",
    "name": "t",
    "conversations": [
        {"id": "only", "decorators": [], "payload": [["user", "Real?", "{image_url}"]], "response_var_name": "result"}
    ],
}


def test_a_decorator_that_raises_fails_that_image_only(tmp_path, chat_server, demo_jobs, monkeypatch):
    (tmp_path / "decorators").mkdir()
    (tmp_path / "decorators" / "flaky.py").write_text(
        "def sometimes(cache):\n"
        "    if 'coffee' in str(cache['_image_path']):\n"
        "        raise RuntimeError('no ROI found')\n"
        "    cache['extra'] = 'x'\n"
    )
    monkeypatch.chdir(tmp_path)
    data = json.loads(json.dumps(PROMPT))
    data["conversations"][0]["decorators"] = ["flaky.sometimes"]
    (tmp_path / "p.json").write_text(json.dumps(data))
    spec = get_model("vllm").model_copy(update={"base_url": chat_server.base_url})
    journal = ResponseJournal(tmp_path / "j.sqlite")
    preds = evaluate_sync(demo_jobs, make_evaluator(spec, load_prompt(tmp_path / "p.json"), journal))
    journal.close()
    failed = [p for p in preds if p.error]
    assert len(failed) == 1 and "no ROI found" in failed[0].error and "coffee" in failed[0].path
    assert chat_server.state.n_chat == len(demo_jobs) - 1


def test_a_dataset_scoped_run_keeps_the_error_rows_of_other_datasets(tmp_path):
    from defake_pipeline.datasets.layouts import DatasetSpec
    from defake_pipeline.datasets.refresh import refresh_manifest
    from defake_pipeline.evaluation.partition import evaluate_partition
    from defake_pipeline.warehouse.layout import HomeLayout

    layout = HomeLayout(tmp_path / "home")
    specs = {}
    for name, shade in (("a", 0), ("b", 1)):
        root = tmp_path / name
        save(Image.new("RGB", (32, 32), (shade, 0, 0)), root / "real" / "x.png")
        save(Image.new("RGB", (32, 32), (255, 255, shade)), root / "fake" / "y.png")
        specs[name] = DatasetSpec(name=name, root=root)
    (tmp_path / "a" / "fake" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # no bytes: keyed missing:<path>
    for spec in specs.values():
        refresh_manifest(layout, spec)
    canny, prompt = get_model("canny"), load_prompt(find_prompt("simple"))
    evaluate_partition(layout, canny, prompt)
    before = pd.read_parquet(layout.predictions_file("canny", NO_PROMPT))
    assert before["image_sha256"].str.startswith("missing:").sum() == 1 and len(before) == 5
    evaluate_partition(layout, canny, prompt, datasets=["b"])
    after = pd.read_parquet(layout.predictions_file("canny", NO_PROMPT))
    assert sorted(after["image_sha256"]) == sorted(before["image_sha256"])


def test_decorators_run_off_the_loop_and_a_slow_one_fails_its_image_only(tmp_path, chat_server, demo_jobs, monkeypatch):
    """Decorators run on threads, so a 1 s decorator does not serialize the run; one
    past its deadline fails that image only."""
    import time

    (tmp_path / "decorators").mkdir()
    (tmp_path / "decorators" / "slow.py").write_text(
        "import time\n\ndef nap(cache):\n    time.sleep(4 if 'coffee' in str(cache['_image_path']) else 1)\n"
    )
    monkeypatch.chdir(tmp_path)
    data = json.loads(json.dumps(PROMPT))
    data["conversations"][0]["decorators"] = ["slow.nap"]
    (tmp_path / "p.json").write_text(json.dumps(data))
    spec = get_model("vllm").model_copy(update={"base_url": chat_server.base_url, "concurrency": 16})
    journal = ResponseJournal(tmp_path / "j.sqlite")
    evaluator = make_evaluator(spec, load_prompt(tmp_path / "p.json"), journal)
    evaluator.decorator_timeout_s = 2.0
    started = time.monotonic()
    preds = evaluate_sync(demo_jobs, evaluator)
    elapsed = time.monotonic() - started
    journal.close()
    failed = [p for p in preds if p.error]
    assert len(failed) == 1 and "coffee" in failed[0].path
    assert failed[0].error == "DecoratorTimeoutError: decorator 'slow.nap' gave no result within 2 s"
    assert len(demo_jobs) >= 8 and elapsed < 3.5  # in parallel: about 1 s, plus the 2 s deadline at most


def test_a_truncated_predictions_file_counts_as_missing_and_a_run_rebuilds_it(tmp_path):
    """A corrupt partition file neither breaks the warehouse nor blocks its own
    repair: it is listed as missing with the reason, and a run rebuilds it from the journal."""
    from defake_pipeline.datasets.layouts import get_dataset
    from defake_pipeline.datasets.refresh import refresh_manifest
    from defake_pipeline.evaluation.partition import evaluate_partition
    from defake_pipeline.warehouse.database import query, rebuild_warehouse
    from defake_pipeline.warehouse.layout import HomeLayout

    layout = HomeLayout(tmp_path / "home")
    refresh_manifest(layout, get_dataset("demo"))
    canny, prompt = get_model("canny"), load_prompt(find_prompt("simple"))
    evaluate_partition(layout, canny, prompt)
    target = layout.predictions_file("canny", NO_PROMPT)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    rebuild_warehouse(layout, partitions=[("canny", NO_PROMPT)])
    gate = query(layout, "SELECT status, reason FROM partition_gate").iloc[0]
    assert gate.status == "missing" and "prompt=-.parquet is unreadable" in gate.reason
    assert "rebuild it from the journal" in gate.reason
    summary = evaluate_partition(layout, canny, prompt, datasets=["demo"])
    assert "rebuilt for every dataset from the journal" in summary.note and summary.n_requests == 0
    assert len(pd.read_parquet(target)) == 16
    rebuild_warehouse(layout, partitions=[("canny", NO_PROMPT)])
    assert query(layout, "SELECT status FROM partition_gate").iloc[0].status == "passed"
