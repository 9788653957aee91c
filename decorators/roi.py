"""ROI decorators: crop the most detailed region of the image and add it as ``roi_url``.

Generated images often look right as a whole and fail in fine detail; showing the model a
crop of the busiest region asks it to look there.
"""

import numpy as np
from PIL import Image

from defake_pipeline.imaging.encode import decode_data_url, encode_pil

# Side of the crop, as a share of the image's shorter side.
ROI_SHARE = 0.5
# The detail map is computed on a small copy; the crop is cut from the full image.
_ANALYSIS_SIDE = 256


def detail_box(img: Image.Image, share: float = ROI_SHARE) -> tuple[int, int, int, int]:
    """The square window with the most gradient energy, as (left, top, right, bottom) in pixels."""
    small = img.convert("L")
    small.thumbnail((_ANALYSIS_SIDE, _ANALYSIS_SIDE))
    grey = np.asarray(small, dtype=np.float32)
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]
    h, w = energy.shape
    win = max(1, int(min(h, w) * share))
    # Summed-area table: the energy of every window in one pass.
    sat = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = sat[win:, win:] - sat[:-win, win:] - sat[win:, :-win] + sat[:-win, :-win]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    scale_x, scale_y = img.width / small.width, img.height / small.height
    side = int(min(img.width, img.height) * share)
    x0 = min(int(left * scale_x), img.width - side)
    y0 = min(int(top * scale_y), img.height - side)
    return x0, y0, x0 + side, y0 + side


def adaptive(cache: dict) -> None:
    img = decode_data_url(cache["image_url"])
    cache["roi_url"] = encode_pil(img.crop(detail_box(img)), "PNG")
