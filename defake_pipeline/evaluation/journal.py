"""The response journal: every paid response, written the moment it arrives.

Leases keep two runners over the same images (a CLI run beside a Dagster run, two ``infer``
processes) from paying twice: a runner claims a key before sending its request, and another
runner that needs the same key waits for that answer instead of asking again. A lease ends
with the answer, with a failure, at its expiry, or with its process (checked on this host).

It is the response cache too. Its key is (model id, hash of the rendered request, image
sha256), so a rerun with nothing changed makes no calls, an edited prompt re-queries only
itself, and a crash loses at most the requests in flight. SQLite in WAL mode lets several
processes (CLI runs, Dagster partition runs) share it without a lock error reaching anyone.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from defake_pipeline.errors import DefakeError, JournalDamagedError, JournalWriteError

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
);
CREATE TABLE IF NOT EXISTS leases (
    model_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (model_id, request_hash, image_sha256)
);
"""
_KEY = "model_id=? AND request_hash=? AND image_sha256=?"


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
        self.owner = uuid.uuid4().hex
        # autocommit mode: each put is its own transaction, durable once put() returns.
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            self._enable_wal()
            # NORMAL survives a killed process (only an OS crash could lose the last commits).
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._failure(exc, "cannot open it") from None

    def _enable_wal(self) -> None:
        # Two runners opening a new journal at once: switching it to WAL can answer "database is
        # locked" at once, without SQLite's busy timeout; the other runner finishes in moments.
        for attempt in range(100):
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)

    def _failure(self, exc: sqlite3.Error, doing: str) -> DefakeError:
        """A one-line error: a damaged file says how to go on, and is never written over."""
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            return JournalDamagedError(
                f"{self.path}: the response journal is damaged ({exc}); it is left as it is: move it aside "
                "to start a new one (its answers are then asked again) or restore a backup"
            )
        return JournalWriteError(
            f"{self.path}: {doing} ({exc}); no further requests are sent, every answer stored before is kept"
        )

    def get(self, model_id: str, request_hash: str, image_sha256: str) -> JournalEntry | None:
        try:
            with self._lock:
                return self._get_unlocked(model_id, request_hash, image_sha256)
        except sqlite3.Error as exc:
            raise self._failure(exc, "cannot read an answer") from None

    def _get_unlocked(self, model_id: str, request_hash: str, image_sha256: str) -> JournalEntry | None:
        row = self._conn.execute(
            f"SELECT response, prompt_tokens, completion_tokens, latency_s, extra FROM responses WHERE {_KEY}",
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
            raise self._failure(exc, "cannot store an answer") from None

    def claim(self, model_id: str, request_hash: str, image_sha256: str, ttl_s: float) -> JournalEntry | bool:
        """The answer if one is stored; else True when this journal now holds the key's lease
        (it should ask), or False while another live runner holds it (wait, then claim again)."""
        key = (model_id, request_hash, image_sha256)
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    outcome = self._claim_in_transaction(key, ttl_s)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._failure(exc, "cannot record a request in flight") from None
        return outcome

    def _claim_in_transaction(self, key: tuple[str, str, str], ttl_s: float) -> JournalEntry | bool:
        entry = self._get_unlocked(*key)
        if entry is not None:
            return entry
        row = self._conn.execute(f"SELECT owner, host, pid, expires_at FROM leases WHERE {_KEY}", key).fetchone()
        if row is not None and row[0] != self.owner and _lease_alive(row[1], row[2], row[3]):
            return False
        self._conn.execute(
            "INSERT OR REPLACE INTO leases VALUES (?,?,?,?,?,?,?)",
            (*key, self.owner, _HOST, os.getpid(), time.time() + ttl_s),
        )
        return True

    def release(self, model_id: str, request_hash: str, image_sha256: str) -> None:
        """Give up this journal's lease on a key (its request failed): another runner may ask."""
        try:
            with self._lock:
                self._conn.execute(
                    f"DELETE FROM leases WHERE {_KEY} AND owner=?", (model_id, request_hash, image_sha256, self.owner)
                )
        except sqlite3.Error:
            pass  # the lease expires on its own

    def _put(self, model_id: str, request_hash: str, image_sha256: str, entry: JournalEntry) -> None:
        row = (
            model_id,
            request_hash,
            image_sha256,
            entry.response,
            entry.prompt_tokens,
            entry.completion_tokens,
            entry.latency_s,
            json.dumps(entry.extra) if entry.extra else None,
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._lock:
            # The answer and the end of its lease in one transaction: a waiting runner sees the
            # lease or the answer, never neither.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?)", row)
                self._conn.execute(f"DELETE FROM leases WHERE {_KEY}", row[:3])
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_HOST = socket.gethostname()


def _lease_alive(host: str, pid: int, expires_at: float) -> bool:
    if expires_at <= time.time():
        return False
    if host != _HOST:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # its process died holding it
    except PermissionError:
        pass
    return True
