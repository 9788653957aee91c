"""Partition progress on the terminal: the progress lines of the workers' run logs, shown as one
bar per partition; anywhere else (a pipe, a CI log) the lines are printed as they come."""

from __future__ import annotations

import sys
import threading

from tqdm import tqdm

from defake_pipeline.evaluation.progress import parse_progress


class PartitionBars:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()

    def relay(self, line: str) -> None:
        """Show one line of a worker's output: a progress line updates its partition's bar."""
        report = parse_progress(line) if self.enabled else None
        with self._lock:
            if report is None:
                if self._bars:
                    tqdm.write(line.rstrip("\n"), file=sys.stderr)
                else:
                    sys.stderr.write(line)
                return
            bar = self._bars.get(report.label)
            if bar is None:
                bar = tqdm(total=report.total, desc=report.label, unit="img", file=sys.stderr, position=len(self._bars))
                self._bars[report.label] = bar
            bar.n = report.done
            bar.set_postfix_str(report.rest, refresh=False)
            bar.refresh()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
