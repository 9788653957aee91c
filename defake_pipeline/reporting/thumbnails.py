"""Small JPEG thumbnails for reports, cached by image hash so each is made once."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageOps

from defake_pipeline.imaging.probe import read_image_bytes
from defake_pipeline.storage import StoredPath, stored_path
from defake_pipeline.warehouse.files import atomic_path

THUMB_SIDE = 96


def _make(source: StoredPath, target: StoredPath) -> bool:
    try:
        with Image.open(io.BytesIO(read_image_bytes(source))) as img:
            img.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))  # JPEG decodes at reduced scale: much faster
            img.seek(0)
            thumb = ImageOps.exif_transpose(img).convert("RGB")
            thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
            with atomic_path(target) as tmp:
                thumb.save(tmp, format="JPEG", quality=80)
        return True
    except Exception:  # noqa: BLE001 - an unreadable image simply gets no thumbnail
        return False


def ensure_thumbnails(images: dict[str, str], folder: StoredPath) -> dict[str, StoredPath]:
    """Thumbnail files for ``{key: image path}``; keys are image hashes. Missing ones are made
    in parallel (Pillow releases the GIL while decoding). The folder is listed once: on an
    object store each existence check would be a request."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = {key: folder / f"{key[:24]}.jpg" for key in images}
    present = {p.name for p in folder.iterdir()} if folder.exists() else set()
    todo = [(stored_path(images[k]), t) for k, t in targets.items() if t.name not in present]
    with ThreadPoolExecutor(max_workers=4) as pool:
        made = list(pool.map(lambda job: _make(*job), todo))
    present |= {t.name for (_, t), ok in zip(todo, made, strict=True) if ok}
    return {k: t for k, t in targets.items() if t.name in present}
