"""The response journal: every paid response, written the moment it arrives.

It is the response cache too. Its key is (model id, hash of the rendered request, image
sha256), so a rerun with nothing changed makes no calls, an edited prompt re-queries only
itself, and a crash loses at most the requests in flight. SQLite in WAL mode lets several
processes (CLI runs, Dagster partition runs) share it without a lock error reaching anyone.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from defake_pipeline.core.errors import JournalWriteError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    model_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    extra TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (model_id, request_hash, image_sha256)
)
"""


@dataclass(frozen=True)
class JournalEntry:
    response: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    extra: dict | None = None


class ResponseJournal:
    """A process-safe, crash-safe key/value store of model responses."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # autocommit mode: each put is its own transaction, durable once put() returns.
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (only an OS crash could lose the last commits).
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

    def get(self, model_id: str, request_hash: str, image_sha256: str) -> JournalEntry | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT response, prompt_tokens, completion_tokens, latency_s, extra FROM responses "
                "WHERE model_id=? AND request_hash=? AND image_sha256=?",
                (model_id, request_hash, image_sha256),
            ).fetchone()
        if row is None:
            return None
        return JournalEntry(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else None)

    def put(self, model_id: str, request_hash: str, image_sha256: str, entry: JournalEntry) -> None:
        """Store one answer; a JournalWriteError (one line) when it cannot be stored."""
        try:
            self._put(model_id, request_hash, image_sha256, entry)
        except sqlite3.Error as exc:
            raise JournalWriteError(
                f"{self.path}: cannot store an answer ({exc}); no further requests are sent, "
                "every answer stored before is kept"
            ) from None

    def _put(self, model_id: str, request_hash: str, image_sha256: str, entry: JournalEntry) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    model_id,
                    request_hash,
                    image_sha256,
                    entry.response,
                    entry.prompt_tokens,
                    entry.completion_tokens,
                    entry.latency_s,
                    json.dumps(entry.extra) if entry.extra else None,
                    datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            )

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
