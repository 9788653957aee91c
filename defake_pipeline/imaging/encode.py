"""How an image is sent: data URLs of the real (content) format, downscaled as the provider would."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

# Formats the chat-completions endpoints accept as data URLs; others are re-encoded to PNG.
_SENDABLE = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
# The modes each re-encoding can hold. An image of another mode (a CMYK or LAB TIFF from print
# work, a 32-bit integer or float TIFF) is sent as RGB, or RGBA where it has an alpha band: the
# conversion open_rgb makes for the baselines, so every detector sees the same pixels.
_MODES = {"JPEG": {"RGB", "L"}, "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"}}


def open_rgb(data: bytes) -> Image.Image:
    """Decode image bytes to an upright RGB image (first frame, EXIF rotation applied)."""
    img = Image.open(io.BytesIO(data))
    img.seek(0)
    return ImageOps.exif_transpose(img).convert("RGB")


@dataclass(frozen=True)
class EncodingPolicy:
    """How an image is sent: its original bytes, or downscaled as the provider would before the
    model sees it. ``max_side``: the long side fits it. ``short_side``: then the short side is
    brought down to it (OpenAI's gpt-4o and 4.1 families at ``detail: high`` fit 2048×2048,
    then scale the short side to 768 px). Images are never enlarged."""

    max_side: int | None = None
    short_side: int | None = None

    @property
    def token(self) -> str:
        parts = [f"{k}={v}" for k, v in (("max_side", self.max_side), ("short_side", self.short_side)) if v]
        return ",".join(parts) or "original"

    @classmethod
    def parse(cls, text: str) -> EncodingPolicy:
        if text in ("", "original"):
            return cls()
        values: dict[str, int] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            if key.strip() not in ("max_side", "short_side") or not value.strip().isdigit():
                raise ValueError(
                    f"unknown encoding policy {text!r} (use 'original', 'max_side=N' or 'max_side=N,short_side=M')"
                )
            values[key.strip()] = int(value)
        return cls(**values)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The pixel size the provider would keep for a ``width`` × ``height`` image."""
        scale = 1.0
        if self.max_side and max(width, height) > self.max_side:
            scale = self.max_side / max(width, height)
        if self.short_side and min(width, height) * scale > self.short_side:
            scale = self.short_side / min(width, height)
        return (max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1 else (width, height)


# A JPEG larger than its target decodes at a reduced DCT scale (1/2, 1/4, 1/8) that keeps at
# least this many times the target's pixels on each side; Lanczos does the rest. A 4000×3000
# photo headed for 1024×768 decodes at 2000×1500: 0.12 s instead of 0.22 s of CPU, 55-56 dB
# PSNR against a Lanczos resize of the full decode on photographs (39 dB on pure noise, the
# worst case, before the JPEG re-encoding).
DRAFT_GAP = 1.5
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


def upright_size(img: Image.Image) -> tuple[int, int]:
    """The image's size once its EXIF orientation is applied."""
    width, height = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a bad EXIF block is ignored by exif_transpose as well
        orientation = None
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def draft_for(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``img``, set to decode a JPEG at the smallest DCT scale still ``DRAFT_GAP`` times the
    (upright) ``target`` on each side; other formats and small reductions are left as they are."""
    width, height = upright_size(img)
    scale = max(target[0] / width, target[1] / height) * DRAFT_GAP
    if img.format == "JPEG" and scale < 1:
        w, h = img.size  # the draft works in the file's own orientation; the scale is uniform
        img.draft(img.mode if img.mode in ("RGB", "L") else None, (math.ceil(w * scale), math.ceil(h * scale)))
    return img


@dataclass(frozen=True)
class EncodedImage:
    """An image as sent: its data URL and the pixels the model gets."""

    url: str
    width: int
    height: int


def encode_as_is(data: bytes, policy: EncodingPolicy = EncodingPolicy()) -> EncodedImage | None:
    """``data`` as a data URL when it can be sent as it is: a format the APIs take, already
    within the policy's size. None when its pixels must be decoded (only the header is read)."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format or "PNG"
        if fmt in _SENDABLE and policy.target_size(*img.size) == img.size:
            return EncodedImage(f"data:{_SENDABLE[fmt]};base64,{base64.b64encode(data).decode('ascii')}", *img.size)
    return None


def encode_image(data: bytes, policy: EncodingPolicy = EncodingPolicy()) -> EncodedImage:
    """Encode image bytes as a data URL whose MIME type matches the real (content) format."""
    as_is = encode_as_is(data, policy)
    if as_is is not None:
        return as_is
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format or "PNG"
        target = policy.target_size(*upright_size(img))
        out_img = ImageOps.exif_transpose(draft_for(img, target))
        if out_img.size != target:
            # LANCZOS: the pixels reaching the model are what the provider's own resize would give.
            out_img = out_img.resize(target, Image.Resampling.LANCZOS)
        out_fmt = fmt if fmt in _SENDABLE and fmt != "GIF" else "PNG"
        if out_fmt in _MODES and out_img.mode not in _MODES[out_fmt]:
            out_img = out_img.convert("RGBA" if out_fmt == "PNG" and out_img.has_transparency_data else "RGB")
        buf = io.BytesIO()
        out_img.save(buf, format=out_fmt, **({"quality": 95} if out_fmt == "JPEG" else {}))
    url = f"data:{_SENDABLE[out_fmt]};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
    return EncodedImage(url, *out_img.size)


def encode_data_url(data: bytes, policy: EncodingPolicy = EncodingPolicy()) -> str:
    """Encode image bytes as a data URL whose MIME type matches the real (content) format."""
    return encode_image(data, policy).url


# Enough of an image's start for its header (dimensions), without decoding the whole URL.
_HEADER_B64_CHARS = 4 * 16_384


def data_url_size(url: str) -> tuple[int, int]:
    """The pixel size of a ``data:image/...;base64,`` URL, read from its header only."""
    payload = url.split(",", 1)[1] if url.startswith("data:") else url
    head = payload[:_HEADER_B64_CHARS]
    try:
        with Image.open(io.BytesIO(base64.b64decode(head + "=" * (-len(head) % 4)))) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
            return img.size


def encode_image_file(path: Path | str, policy: EncodingPolicy = EncodingPolicy()) -> str:
    """Data URL for an image file (used by decorators for few-shot examples)."""
    return encode_data_url(Path(path).read_bytes(), policy)


def decode_data_url(url: str) -> Image.Image:
    """RGB image from a ``data:image/...;base64,`` URL (used by decorators that crop)."""
    payload = url.split(",", 1)[1] if url.startswith("data:") else url
    return open_rgb(base64.b64decode(payload))


def encode_pil(img: Image.Image, fmt: str = "PNG") -> str:
    """Data URL for an in-memory image."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:{_SENDABLE[fmt]};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
