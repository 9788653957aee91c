"""Partition progress on the terminal: the progress lines of the run logs (a worker's, or this
process's own Dagster console), shown as one bar per partition; anywhere else (a pipe, a CI log)
the lines are printed as they come. Either way a failure's stack trace is left to the run's
event log (the UI shows it): the terminal gets the error's own line."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from defake_pipeline.evaluation.progress import parse_progress
from defake_pipeline.evaluation.stopping import stops


class StackTraceFilter:
    """Tells the lines of the stack traces in Dagster's console lines (a ``Stack Trace:`` line,
    the indented frames under it, and the blank line that ends them) from the others."""

    def __init__(self) -> None:
        self._in_trace = False

    def keep(self, line: str) -> bool:
        text = line.rstrip("\n")
        if text == "Stack Trace:":
            self._in_trace = True
            return False
        if self._in_trace:
            if text.startswith(" "):
                return False
            self._in_trace = False
            return bool(text)
        return True


class PartitionBars:
    def __init__(self, enabled: bool | None = None, out: TextIO | None = None):
        self.out = out or sys.stderr  # held: sys.stderr may be routed through these bars
        self.enabled = self.out.isatty() if enabled is None else enabled
        self._bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()
        self._traces = StackTraceFilter()

    def relay(self, line: str) -> None:
        """Show one line of a worker's output: a progress line updates its partition's bar."""
        report = parse_progress(line) if self.enabled else None
        with self._lock:
            if not self._traces.keep(line):
                return
            if report is None:
                if self._bars:
                    tqdm.write(line.rstrip("\n"), file=self.out)
                else:
                    self.out.write(line)
                return
            bar = self._bars.get(report.label)
            if bar is None:
                bar = tqdm(
                    total=report.total,
                    desc=report.label,
                    file=self.out,
                    position=len(self._bars),
                    # The rate and ETA come with the line (the bar sees only the lines' jumps).
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images{postfix}",
                )
                self._bars[report.label] = bar
            bar.n = report.done
            bar.set_postfix_str(report.rest, refresh=False)
            bar.refresh()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()


class _LinesToBars:
    """``sys.stderr`` while this process runs partitions itself: whole lines go to the bars."""

    def __init__(self, bars: PartitionBars):
        self.bars = bars
        self._pending = ""
        self._stops = stops()

    def write(self, text: str) -> int:
        if stops() > self._stops:
            # Stopped by a signal: Dagster's account of the interrupted steps and run stays in
            # the run's log; the command ends with its own one line.
            return len(text)
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self.bars.relay(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.bars.relay(self._pending)
            self._pending = ""
        self.bars.out.flush()

    def __getattr__(self, attr):
        return getattr(self.bars.out, attr)


@contextmanager
def bars_in_this_process() -> Iterator[None]:
    """What this process's Dagster runs log, through ``PartitionBars``: on a terminal, progress
    lines as bars; anywhere, with no stack traces."""
    bars = PartitionBars()
    routed = _LinesToBars(bars)
    sys.stderr = routed
    try:
        yield
    finally:
        sys.stderr = bars.out
        routed.flush()
        bars.close()
