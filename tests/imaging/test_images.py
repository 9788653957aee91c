import base64
import io
import math

import pytest
from PIL import Image, ImageOps

from conftest import REPO, upstream_or_skip
from defake_pipeline.endpoints.baselines import (
    CANNY_THRESHOLD,
    canny_detect,
    canny_edge_density,
)
from defake_pipeline.imaging.encode import EncodingPolicy, draft_for, encode_data_url
from defake_pipeline.imaging.probe import probe_image
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


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("CMYK", "TIFF"), ("LAB", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("PA", "WEBP"), ("RGBA", "JPEG2000")],
)
def test_an_image_of_any_mode_pillow_opens_is_sent(mode, fmt):
    """A CMYK or LAB TIFF, a 32-bit integer or float TIFF: re-encoded for the request in a mode
    its format holds, never an error row for an image the baselines read."""
    buf = io.BytesIO()
    Image.new(mode, (40, 30)).save(buf, format=fmt)
    url = encode_data_url(buf.getvalue())
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (40, 30) and sent.format in ("PNG", "JPEG", "WEBP")
    assert sent.mode == ("RGBA" if mode in ("PA", "RGBA") else "RGB")


def _psnr(a: Image.Image, b: Image.Image) -> float:
    import numpy as np

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return 10 * math.log10(255**2 / float((diff**2).mean()))


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_decodes_at_a_reduced_dct_scale_with_lanczos_quality(orientation):
    """A 4000×3000 JPEG headed for 1024×768 is decoded at 2000×1500 (half the work of a full
    decode), and what is sent stays close to a Lanczos resize of the full decode, even on noise."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.effect_noise((4000, 3000), 40).convert("RGB").save(buf, format="JPEG", quality=90, exif=exif)
    policy = EncodingPolicy.parse("max_side=2048,short_side=768")
    upright = (3000, 4000) if orientation == 6 else (4000, 3000)
    target = policy.target_size(*upright)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert draft_for(img, target).size == (2000, 1500)  # the file's own orientation
    url = encode_data_url(buf.getvalue(), policy)
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == target
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        reference = ImageOps.exif_transpose(img).resize(target, Image.Resampling.LANCZOS)
    # Noise is the worst case (photographs: 55 dB). Measured: 37.4 dB; sending the full decode
    # gives 42.3 dB (its JPEG re-encoding alone); a decode at 1/4 scale, enlarged, 33.1 dB.
    assert _psnr(sent.convert("RGB"), reference) > 36
    small = io.BytesIO()
    Image.new("RGB", (1100, 800), "red").save(small, format="JPEG")
    with Image.open(small) as img:  # 1100×800 → 1056×768 is no reduction worth a coarser decode
        assert draft_for(img, policy.target_size(1100, 800)).size == (1100, 800)


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


def test_only_an_image_that_can_go_as_it_is_is_encoded_from_its_header(tmp_path):
    """What needs no pixel work (a format the APIs take, within the policy's size) is
    encoded from its header and bytes; the rest is left to ``encode_image``."""
    from defake_pipeline.imaging.encode import encode_as_is, encode_image

    gpt4o = EncodingPolicy(max_side=2048, short_side=768)
    small, large, bitmap = tmp_path / "small.jpg", tmp_path / "large.jpg", tmp_path / "small.bmp"
    Image.effect_noise((256, 192), 30).convert("RGB").save(small, quality=85)
    Image.effect_noise((1600, 1200), 30).convert("RGB").save(large, quality=85)
    Image.effect_noise((64, 48), 30).convert("RGB").save(bitmap)
    assert encode_as_is(small.read_bytes(), gpt4o) == encode_image(small.read_bytes(), gpt4o)
    assert encode_as_is(large.read_bytes(), gpt4o) is None  # to be downscaled
    assert encode_as_is(bitmap.read_bytes()) is None  # to be converted to PNG
