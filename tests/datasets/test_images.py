import base64
import io

import pytest
from PIL import Image

from conftest import REPO, upstream_or_skip
from defake_pipeline.datasets.images import EncodingPolicy, encode_data_url, probe_image
from defake_pipeline.endpoints.baselines import (
    CANNY_THRESHOLD,
    canny_detect,
    canny_edge_density,
)
from defake_pipeline.verdict import parse_verdict


def test_probe_reads_format_from_content_not_extension(tmp_path):
    path = tmp_path / "liar.png"
    Image.new("RGB", (40, 30), "red").save(path, format="JPEG")
    probe = probe_image(path)
    assert (probe.format, probe.width, probe.height, probe.error) == ("JPEG", 40, 30, None)
    assert len(probe.sha256) == 64
    assert encode_data_url(path.read_bytes()).startswith("data:image/jpeg;base64,")


def test_upstream_png_that_is_a_jpeg():
    probe = probe_image(upstream_or_skip("decider", "images", "fake", "IMG_7329.png"))
    assert probe.format == "JPEG" and probe.error is None


def test_probe_reports_bad_files_without_raising(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert "empty file" in probe_image(empty).error
    assert "not a readable image" in probe_image(text).error
    assert "unreadable" in probe_image(tmp_path / "missing.jpg").error


def test_probe_records_generator_metadata(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a photo of a cat, Steps: 30, Sampler: DPM++ 2M Karras")
    path = tmp_path / "sd.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert "Sampler" in probe_image(path).provenance["parameters"]


def test_encoding_policy_downscales_and_keeps_format(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), "blue").save(buf, format="JPEG")
    url = encode_data_url(buf.getvalue(), EncodingPolicy(max_side=2048))
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size == (2048, 1536)
    original = encode_data_url(buf.getvalue(), EncodingPolicy())
    assert base64.b64decode(original.split(",", 1)[1]) == buf.getvalue()


def test_canny_baseline_looks_at_pixels():
    flat = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(flat, format="PNG")
    assert canny_edge_density(flat.getvalue()) == 0.0
    assert parse_verdict(canny_detect(flat.getvalue()).text) == "fake"
    gravel = (REPO / "demo" / "real" / "gravel.jpg").read_bytes()
    assert canny_edge_density(gravel) > CANNY_THRESHOLD
    assert parse_verdict(canny_detect(gravel).text) == "real"
    assert canny_detect(gravel).score_fake < 0.5 < canny_detect(flat.getvalue()).score_fake


def test_openai_detail_high_rule_and_policy_tokens():
    high = EncodingPolicy.parse("max_side=2048,short_side=768")
    assert high.token == "max_side=2048,short_side=768" and EncodingPolicy.parse(high.token) == high
    # fit 2048×2048, then the short side to 768; portrait alike; never enlarged
    assert high.target_size(4000, 3000) == (1024, 768) and high.target_size(3000, 4000) == (768, 1024)
    assert high.target_size(8000, 1000) == (2048, 256) and high.target_size(1000, 700) == (1000, 700)
    assert EncodingPolicy().token == "original"
    assert EncodingPolicy.parse("max_side=512").target_size(4000, 3000) == (512, 384)
    with pytest.raises(ValueError, match="unknown encoding policy"):
        EncodingPolicy.parse("max_side=big")
