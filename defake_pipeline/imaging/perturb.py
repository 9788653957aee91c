"""Perturbations of an image for robustness sweeps, written ``kind:value`` in a dataset file.

- ``jpeg:Q`` and ``webp:Q``: re-encoded at quality Q (1 to 100);
- ``resize:S``: both sides scaled by S (0.05 to 4), Lanczos;
- ``crop:F``: the centred crop keeping a fraction F (0.05 to 1) of each side;
- ``blur:R``: a Gaussian blur of radius R pixels (0 to 50).

Each is deterministic: the same source bytes give the same output bytes, so a derived image is
made once and then found by its name. Only the named change is made: an image resized, cropped
or blurred is saved as PNG, which adds no compression of its own.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps

from defake_pipeline.imaging.probe import MAX_PIXELS

# kind: (type of the value, lowest, highest)
PERTURBATION_KINDS: dict[str, tuple[type, float, float]] = {
    "jpeg": (int, 1, 100),
    "webp": (int, 1, 100),
    "resize": (float, 0.05, 4.0),
    "crop": (float, 0.05, 1.0),
    "blur": (float, 0.0, 50.0),
}


@dataclass(frozen=True)
class Perturbation:
    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Perturbation:
        """``kind:value``; a ValueError says what is wrong and what is allowed."""
        kind, sep, raw = str(text).partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in PERTURBATION_KINDS:
            kinds = ", ".join(f"{k}:<{t.__name__} {lo:g}–{hi:g}>" for k, (t, lo, hi) in PERTURBATION_KINDS.items())
            raise ValueError(f"perturbation {text!r} is not kind:value with a kind of {kinds}")
        type_, low, high = PERTURBATION_KINDS[kind]
        try:
            value = type_(raw.strip())
        except ValueError:
            raise ValueError(
                f"perturbation {text!r}: {kind} takes {'an integer' if type_ is int else 'a number'}"
            ) from None
        if not low <= value <= high:
            raise ValueError(f"perturbation {text!r}: {kind} takes {low:g} to {high:g}")
        return cls(kind, value)

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.value:g}"

    @property
    def slug(self) -> str:
        """The perturbation in a name: ``jpeg-75``, ``resize-0.5``."""
        return f"{self.kind}-{self.value:g}"

    @property
    def suffix(self) -> str:
        return {"jpeg": ".jpg", "webp": ".webp"}.get(self.kind, ".png")

    def apply(self, data: bytes) -> bytes:
        """The perturbed image, encoded, from the source image's bytes."""
        with Image.open(io.BytesIO(data)) as source:
            if source.width * source.height > MAX_PIXELS:
                raise ValueError(f"{source.width}x{source.height} pixels is over the limit of {MAX_PIXELS}")
            image = ImageOps.exif_transpose(source).convert("RGB")
        if self.kind == "resize":
            size = (max(1, round(image.width * self.value)), max(1, round(image.height * self.value)))
            if size[0] * size[1] > MAX_PIXELS:  # refused before gigabytes are spent making it
                raise ValueError(f"resized to {size[0]}x{size[1]} pixels is over the limit of {MAX_PIXELS}")
            image = image.resize(size, Image.Resampling.LANCZOS)
        elif self.kind == "crop":
            w, h = max(1, round(image.width * self.value)), max(1, round(image.height * self.value))
            left, top = (image.width - w) // 2, (image.height - h) // 2
            image = image.crop((left, top, left + w, top + h))
        elif self.kind == "blur":
            image = image.filter(ImageFilter.GaussianBlur(self.value))
        out = io.BytesIO()
        if self.kind == "jpeg":
            image.save(out, "JPEG", quality=int(self.value))
        elif self.kind == "webp":
            image.save(out, "WEBP", quality=int(self.value), method=4)
        else:
            image.save(out, "PNG")
        return out.getvalue()
