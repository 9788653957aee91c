"""Image probing (format from content, size, hash, provenance) and encoding to data URLs."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

# Refuse decompression bombs: an image over this many pixels is a probe error, not a crash.
# It is where Pillow raises DecompressionBombError (twice its MAX_IMAGE_PIXELS); Pillow's own
# setting is left alone, and its warning between the two is not an error here.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jfif"}
)
# Formats the chat-completions endpoints accept as data URLs; others are re-encoded to PNG.
_SENDABLE = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
# PNG text chunks and EXIF fields that generators are known to write.
_GENERATOR_TEXT_KEYS = ("parameters", "prompt", "workflow", "Software", "Comment", "Description")
_EXIF_SOFTWARE = 0x0131


@dataclass(frozen=True)
class ImageProbe:
    """What one image file is, read from its bytes."""

    sha256: str | None
    size_bytes: int | None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def is_image_candidate(path: Path) -> bool:
    """Files worth probing: image suffixes, skipping hidden files and OS junk."""
    name = path.name
    return not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _provenance(img: Image.Image, data: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in _GENERATOR_TEXT_KEYS:
        value = img.info.get(key)
        if isinstance(value, (str, bytes)) and value:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            found[key] = text[:2000]
    try:
        software = img.getexif().get(_EXIF_SOFTWARE)
        if software:
            found["exif_software"] = str(software)[:200]
    except Exception:  # noqa: BLE001 - EXIF is optional metadata; a bad block must not fail the probe
        pass
    # C2PA manifests live in JUMBF boxes labelled "c2pa"; their presence is what we record.
    if b"c2pa" in data[:1_000_000]:
        found["c2pa"] = "present"
    return found


def _decode_error(path: Path, exc: Exception) -> str:
    if path.suffix.lower() in (".heic", ".heif", ".avif") and "cannot identify" in str(exc):
        return f"{path.suffix[1:].upper()} is not supported by this Pillow build (convert the image to JPEG or PNG)"
    return f"not a readable image: {exc}"


def probe_image(path: Path) -> ImageProbe:
    """Hash and inspect one file. Never raises: a bad file gives a probe with ``error`` set."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        if path.is_symlink() and not path.exists():
            return ImageProbe(sha256=None, size_bytes=None, error=f"broken or looping symlink ({exc.strerror or exc})")
        return ImageProbe(sha256=None, size_bytes=None, error=f"unreadable: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageProbe(sha256=sha, size_bytes=0, error="empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # verify() must come straight after open() and leaves the image unusable,
            # so the metadata is read from a second open.
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{width * height} pixels, over the {MAX_PIXELS} limit")
                fmt = img.format
                provenance = _provenance(img, data)
                # A full decode finds truncated files that verify() lets through; JPEGs decode
                # at reduced scale, which still reads every byte.
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
    except Image.DecompressionBombError as exc:
        return ImageProbe(sha256=sha, size_bytes=len(data), error=f"refused as a decompression bomb: {exc}")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-image probe error
        return ImageProbe(sha256=sha, size_bytes=len(data), error=_decode_error(path, exc))
    return ImageProbe(sha256=sha, size_bytes=len(data), width=width, height=height, format=fmt, provenance=provenance)


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
        if out_fmt == "JPEG" and out_img.mode not in ("RGB", "L"):
            out_img = out_img.convert("RGB")
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
