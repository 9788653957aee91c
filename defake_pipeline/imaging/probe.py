"""What an image file is, read from its bytes: format (from content, not suffix), size, hash, provenance."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field

from PIL import Image

from defake_pipeline.storage import RefusedFile, StoredPath, is_remote, read_regular_file

# Refuse decompression bombs: an image over this many pixels is a probe error, not a crash.
# It is where Pillow raises DecompressionBombError (twice its MAX_IMAGE_PIXELS); Pillow's own
# setting is left alone, and its warning between the two is not an error here (imaging/__init__).
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970

# Far above any image a model API takes (OpenAI's limit is 20 MB a request); a file over it is a
# probe error, and no read takes in more than this, whatever the file claims to be.
MAX_IMAGE_BYTES = 100 << 20

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jfif"}
)
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


def is_image_candidate(path: StoredPath) -> bool:
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


# Pillow names the in-memory buffer it was given ("<_io.BytesIO object at 0x7f53…>"); the
# error names the file instead.
_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _decode_error(path: StoredPath, exc: Exception) -> str:
    if path.suffix.lower() in (".heic", ".heif", ".avif") and "cannot identify" in str(exc):
        return f"{path.suffix[1:].upper()} is not supported by this Pillow build (convert the image to JPEG or PNG)"
    return f"not a readable image: {_BUFFER_REPR.sub(path.name, str(exc))}"


def read_image_bytes(path: StoredPath) -> bytes:
    """An image file's bytes. Only a regular file is read (a named pipe would block, and
    ``/dev/zero`` never ends), and never more than ``MAX_IMAGE_BYTES``; else RefusedFile.
    An object on a store is fetched in one ranged request, bounded the same way."""
    limit = f"{MAX_IMAGE_BYTES >> 20} MB limit for one image"
    if not is_remote(path):
        return read_regular_file(str(path), MAX_IMAGE_BYTES, limit)
    data = path.fs.cat_file(path.path, start=0, end=MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise RefusedFile(f"over the {limit}")
    return data


def probe_image(path: StoredPath) -> ImageProbe:
    """Hash and inspect one file. Never raises: a bad file gives a probe with ``error`` set."""
    try:
        data = read_image_bytes(path)
    except RefusedFile as exc:
        return ImageProbe(sha256=None, size_bytes=None, error=str(exc))
    except OSError as exc:
        if path.is_symlink() and not path.exists():
            return ImageProbe(sha256=None, size_bytes=None, error=f"broken or looping symlink ({exc.strerror or exc})")
        return ImageProbe(sha256=None, size_bytes=None, error=f"unreadable: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageProbe(sha256=sha, size_bytes=0, error="empty file (0 bytes)")
    try:
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
