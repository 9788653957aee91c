"""Baseline detectors run here on the pixels (no model): the seed's Canny edge-density rule."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from defake_pipeline.imaging.encode import open_rgb

CANNY_LOW, CANNY_HIGH = 100, 200
# The seed's rule: an edge density above this is called real.
CANNY_THRESHOLD = 0.0672
# Spread of the logistic that turns density into a score; chosen so a density 0.05 away from
# the threshold maps to about 0.92 / 0.08. It orders images for AUC; it is not calibrated.
_CANNY_SCORE_SCALE = 0.02


@dataclass(frozen=True)
class BaselineReply:
    text: str
    score_fake: float


def canny_edge_density(data: bytes) -> float:
    """Share of pixels OpenCV's Canny (thresholds 100/200) marks as edges, on the grey image."""
    # OpenCV and numpy load here: a chat model's run (the common one) never needs them.
    import cv2
    import numpy as np

    grey = np.asarray(open_rgb(data).convert("L"))
    edges = cv2.Canny(grey, CANNY_LOW, CANNY_HIGH)
    return float(np.count_nonzero(edges)) / edges.size


def canny_detect(data: bytes) -> BaselineReply:
    density = canny_edge_density(data)
    verdict = "real" if density > CANNY_THRESHOLD else "generated"
    score = 1.0 / (1.0 + math.exp((density - CANNY_THRESHOLD) / _CANNY_SCORE_SCALE))
    return BaselineReply(
        text=f"edge density {density:.4f} against threshold {CANNY_THRESHOLD}: {verdict}", score_fake=score
    )


@dataclass(frozen=True)
class Baseline:
    detect: Callable[[bytes], BaselineReply]
    version: str  # part of the journal key: a changed rule asks again


# Every baseline, by name, with its version.
BASELINES = {"canny": Baseline(canny_detect, f"canny-{CANNY_LOW}-{CANNY_HIGH}-{CANNY_THRESHOLD}-v1")}


async def run_baseline(detector: str, data: bytes) -> BaselineReply:
    # Pixel work is CPU-bound: a worker thread keeps the event loop free (OpenCV releases the GIL).
    return await asyncio.to_thread(BASELINES[detector].detect, data)
