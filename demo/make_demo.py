"""Regenerate demo/: real photographs from scikit-image's bundled samples, and synthetic stand-ins.

Run with the demo-build extra installed:  .venv/bin/pip install -e '.[demo-build]' && .venv/bin/python demo/make_demo.py
The output is committed, so nobody needs scikit-image to run the demo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from PIL.PngImagePlugin import PngInfo

HERE = Path(__file__).resolve().parent
LONG_SIDE = 384
# Photographs whose scikit-image docstrings state public-domain or CC0 terms.
REAL_SAMPLES = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "brick", "gravel"]


def _fit(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    img.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
    return img


def make_reals(out: Path) -> None:
    import skimage.data

    out.mkdir(parents=True, exist_ok=True)
    for name in REAL_SAMPLES:
        _fit(Image.fromarray(getattr(skimage.data, name)())).save(out / f"{name}.jpg", quality=90)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    a, b = rng.uniform(-1, 1, 2)
    base = rng.uniform(40, 200, 3)
    field = (a * x + b * y)[..., None] * rng.uniform(40, 90, 3)
    return np.clip(base + field, 0, 255)


def _blobs(rng: np.random.Generator, size: int, canvas: np.ndarray, n: int) -> Image.Image:
    img = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(n):
        cx, cy, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 12, size / 4)]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(3, 9)))


def make_standins(out: Path, count: int = 8, seed: int = 3706) -> None:
    """Smooth procedural scenes: the airbrushed look of many generators, made without any model."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        size = LONG_SIDE
        img = _blobs(rng, size, _gradient(rng, size), n=int(rng.integers(4, 12)))
        if i % 4 == 3:
            # A few stand-ins carry fine noise, so a pixel baseline does not get them all right.
            noise = rng.normal(0, 22, (size, size, 3))
            img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        info = PngInfo()
        info.add_text("Software", "defake-pipeline demo/make_demo.py (synthetic stand-in)")
        img.save(out / f"standin_{i:02d}.png", pnginfo=info)


if __name__ == "__main__":
    make_reals(HERE / "real")
    make_standins(HERE / "fake")
    print(f"wrote {len(list((HERE / 'real').iterdir()))} real and {len(list((HERE / 'fake').iterdir()))} stand-in images")
