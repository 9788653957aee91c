"""Progress of a long evaluation as lines: every 10 s, and at each 5% of the images that comes
a second or more after the last line (a small, fast run is not a line per image).

A partition runs inside Dagster, whose run log is where the UI looks; the CLI shows those lines
as they come, or, on a terminal, as one bar per partition (``parse_progress``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from defake_pipeline.records import Prediction

EVERY_S = 10.0
EVERY_SHARE = 0.05
MIN_GAP_S = 1.0


def _duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class ProgressLines:
    """Counts one evaluation's predictions and says when a line is due."""

    label: str
    total: int
    every_s: float = EVERY_S
    every_share: float = EVERY_SHARE
    done: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)
    _last_at: float = 0.0
    _last_done: int = 0

    def __post_init__(self) -> None:
        self._last_at = self.started

    def add(self, pred: Prediction) -> str | None:
        """Count a prediction; the line to show, when one is due (the last one always is)."""
        self.done += 1
        self.errors += pred.error is not None
        now = time.monotonic()
        step = max(1, math.ceil(self.total * self.every_share))
        since = now - self._last_at
        due = since >= self.every_s or (self.done - self._last_done >= step and since >= MIN_GAP_S)
        if not due and self.done < self.total:
            return None
        self._last_at, self._last_done = now, self.done
        return self.line(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (now or time.monotonic()) - self.started)
        rate = self.done / elapsed
        eta = _duration((self.total - self.done) / rate) if rate > 0 and self.done < self.total else "0s"
        share = 100 * self.done / self.total if self.total else 100.0
        return (
            f"progress {self.label}: {self.done}/{self.total} images ({share:.0f}%), {rate:.1f}/s, "
            f"ETA {eta}, {self.errors} errors"
        )


_LINE = re.compile(r"progress (?P<label>\S+): (?P<done>\d+)/(?P<total>\d+) images \(\d+%\), (?P<rest>.*)$")


@dataclass(frozen=True)
class ProgressReport:
    label: str
    done: int
    total: int
    rest: str  # rate, ETA, errors


def parse_progress(line: str) -> ProgressReport | None:
    """A progress line found in a run log line, or None."""
    found = _LINE.search(line.rstrip())
    if found is None:
        return None
    return ProgressReport(found["label"], int(found["done"]), int(found["total"]), found["rest"])
