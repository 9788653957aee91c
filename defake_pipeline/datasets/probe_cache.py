"""Probes remembered between ``mllmdf infer`` runs, keyed by path, size and modification time.

``infer`` has no manifest, so without this it reads, hashes and decode-checks every image on
every run just to find its cache key: about a millisecond an image, most of a warm rerun. The
key is the one the manifest trusts (size and ``mtime_ns``): a file rewritten in place gets a new
modification time and is probed again. Only clean probes are kept; a file that failed is probed
again each run (its cause, such as permissions, can change without touching the file).

The cache is an optimisation: if its file cannot be opened or written, runs go on without it.
Paths are stored as the file system's own bytes: a name that is not valid UTF-8 is a key too.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from defake_pipeline.datasets.images import ImageProbe

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS probes (
    path BLOB PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    format TEXT
)
"""
# Probes are written in batches: one transaction per image would cost more than it saves.
_BATCH = 256


def stat_key(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class ProbeCache:
    """A small SQLite table of clean probes; every failure turns it off, never the run."""

    def __init__(self, path: Path):
        self.path = path
        self._pending: list[tuple] = []
        self._conn: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, timeout=10, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            self._off(exc)

    def _off(self, exc: sqlite3.Error) -> None:
        log.warning("%s: probe cache not used (%s); images are probed as usual", self.path, exc)
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def get(self, path: Path, key: tuple[int, int]) -> ImageProbe | None:
        if self._conn is None:
            return None
        try:
            row = self._conn.execute(
                "SELECT sha256, width, height, format FROM probes WHERE path=? AND size_bytes=? AND mtime_ns=?",
                (os.fsencode(path), *key),
            ).fetchone()
        except sqlite3.Error as exc:
            self._off(exc)
            return None
        if row is None:
            return None
        return ImageProbe(sha256=row[0], size_bytes=key[0], width=row[1], height=row[2], format=row[3])

    def put(self, path: Path, key: tuple[int, int], probe: ImageProbe) -> None:
        if self._conn is None or probe.error is not None or not probe.sha256:
            return
        self._pending.append((os.fsencode(path), *key, probe.sha256, probe.width, probe.height, probe.format))
        if len(self._pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._conn is None or not self._pending:
            return
        try:
            with self._conn:  # one transaction for the batch
                self._conn.execute("BEGIN")
                self._conn.executemany("INSERT OR REPLACE INTO probes VALUES (?,?,?,?,?,?,?)", self._pending)
        except sqlite3.Error as exc:
            self._off(exc)
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
