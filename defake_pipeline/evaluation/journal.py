"""The response journal: every paid response, written the moment it arrives.

Leases keep two runners over the same images (a CLI run beside a Dagster run, two ``infer``
processes) from paying twice: a runner claims a key before sending its request, and another
runner that needs the same key waits for that answer instead of asking again. A lease ends
with the answer, with a failure, at its expiry, or with its process (checked on this host).

It is the response cache too. Its key is what answered (the endpoint and the id it serves the
model under), the hash of the rendered request and the image's sha256, so a rerun with
nothing changed makes no calls, an edited prompt re-queries only itself, and a crash loses
at most the requests in flight. SQLite in WAL mode lets several
processes (CLI runs, Dagster partition runs) share it without a lock error reaching anyone.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from defake_pipeline.errors import DefakeError, JournalDamagedError, JournalWriteError
from defake_pipeline.text import shown_url
from defake_pipeline.verdict import parse_verdict

if TYPE_CHECKING:  # the SDK's import is paid only by runs that ask
    from defake_pipeline.endpoints.chat import ChatReply
    from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.warehouse.files import process_alive
from defake_pipeline.warehouse.layout import HomeLayout


def journal_tables(real: str, timestamp: str) -> str:
    """The journal's tables, in SQLite or PostgreSQL: ``real`` names the floating-point type,
    ``timestamp`` the type (and default) of the times rows were written.

    Answers are keyed by what answered (the endpoint, without credentials, and the id it serves
    the model under), the rendered request's hash and the image's sha256. ``responses`` is the
    layout before the endpoint was part of the key: its answers are adopted, each once, by the
    first endpoint that asks for them under the same served id (see ``_adopt_legacy``)."""
    return f"""
CREATE TABLE IF NOT EXISTS answers (
    endpoint TEXT NOT NULL,
    model_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s {real} NOT NULL DEFAULT 0,
    extra TEXT,
    created_at {timestamp},
    PRIMARY KEY (endpoint, model_id, request_hash, image_sha256)
);
CREATE TABLE IF NOT EXISTS answer_leases (
    endpoint TEXT NOT NULL,
    model_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires_at {real} NOT NULL,
    PRIMARY KEY (endpoint, model_id, request_hash, image_sha256)
);
CREATE TABLE IF NOT EXISTS served_ids (
    endpoint TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_id TEXT NOT NULL,
    chosen_at {timestamp},
    PRIMARY KEY (endpoint, model_name)
);
"""


_SCHEMA = journal_tables("REAL", "TEXT NOT NULL")
_KEY = "endpoint=? AND model_id=? AND request_hash=? AND image_sha256=?"
_LEGACY_KEY = "model_id=? AND request_hash=? AND image_sha256=?"
_ANSWER_COLUMNS = "response, prompt_tokens, completion_tokens, latency_s, extra"


def hash_request(payload: dict) -> str:
    """A rendered request's hash, for its key: an image that is encoded when sent stands in by
    its token (its content's sha256 and the encoding), so a warm rerun reads no image."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=lambda o: o.token)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AnswerKey(NamedTuple):
    """What identifies one paid answer."""

    endpoint: str  # where it was asked: the base URL without credentials, or local:<detector>
    model_id: str  # the id the endpoint serves the model under
    request_hash: str  # the rendered request (prompt, decorator outputs, encoding, settings)
    image_sha256: str


@dataclass(frozen=True)
class JournalEntry:
    response: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    extra: dict | None = None


def journal_entry(spec: ModelSpec, reply: ChatReply, extra: dict | None = None) -> JournalEntry:
    """A paid answer as the journal keeps it, sent directly or answered in a batch."""
    extra = dict(extra or {})
    if reply.score_fake is not None:
        extra["score_fake"] = reply.score_fake
    if reply.repaired_encoding:
        extra["repaired_encoding"] = True  # paid for: kept with U+FFFD where bytes were invalid
    if reply.usage_estimated:
        extra["usage_estimated"] = True
    if reply.served_model:
        extra["served_model"] = reply.served_model
    if reply.fingerprint:
        extra["fingerprint"] = reply.fingerprint
    text = reply.text
    if reply.refusal is not None:
        # Billed, and an answer: the model declined. Its verdict is unknown, whatever words
        # ("I can't tell whether this is real") the refusal holds.
        text = reply.refusal
        extra.update(refusal=True, verdict="unknown")
    if len(text) > spec.max_response_chars:
        # What is stored (journal, Parquet, CSV, reports) is capped; the verdict is read from
        # the whole answer now and kept, and later turns see the capped text on every run.
        extra.setdefault("verdict", parse_verdict(text))
        extra["response_chars"] = len(text)
        text = text[: spec.max_response_chars] + f" … [truncated: {len(text):,} characters in all]"
    return JournalEntry(text, reply.prompt_tokens, reply.completion_tokens, reply.latency_s, extra or None)


class Claim(Enum):
    """What ``claim`` found for a key with no stored answer."""

    ASK = "ask"  # this journal holds the lease now: send the request
    WAIT = "wait"  # a request for it is in flight (this runner's or another's): wait for its answer


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
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            self._has_legacy = "responses" in tables
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

    def get(self, key: AnswerKey) -> JournalEntry | None:
        try:
            with self._lock:
                return self._get_unlocked(key)
        except sqlite3.Error as exc:
            raise self._failure(exc, "cannot read an answer") from None

    def _get_unlocked(self, key: AnswerKey) -> JournalEntry | None:
        row = self._conn.execute(f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE {_KEY}", key).fetchone()
        if row is None and self._has_legacy:
            row = self._adopt_legacy(key)
        if row is None:
            return None
        return JournalEntry(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else None)

    def _adopt_legacy(self, key: AnswerKey) -> tuple | None:
        """An answer stored before the endpoint was part of the key, moved under this endpoint.

        Which endpoint gave it was not recorded; the first to ask for it under the same served
        id takes it, and it leaves the old table, so a second endpoint serving that id asks its
        own model instead of sharing the answer."""
        legacy = key[1:]
        row = self._conn.execute(f"SELECT {_ANSWER_COLUMNS}, created_at FROM responses WHERE {_LEGACY_KEY}", legacy)
        found = row.fetchone()
        if found is None:
            return None
        in_transaction = self._conn.in_transaction
        if not in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("INSERT OR IGNORE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?)", (*key, *found))
            self._conn.execute(f"DELETE FROM responses WHERE {_LEGACY_KEY}", legacy)
            if not in_transaction:
                self._conn.execute("COMMIT")
        except BaseException:
            if not in_transaction and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        return found[:5]

    def put(self, key: AnswerKey, entry: JournalEntry) -> None:
        """Store one answer; a JournalWriteError (one line) when it cannot be stored."""
        try:
            self._put(key, entry)
        except sqlite3.Error as exc:
            raise self._failure(exc, "cannot store an answer") from None

    def claim(self, key: AnswerKey, ttl_s: float) -> JournalEntry | Claim:
        """The answer if one is stored; else whether to ask now (this journal took the key's
        lease) or to wait: a live lease is held, by another runner or by this one for another
        image of the same content, and its answer serves this one too."""
        # A stored answer (every image of a warm rerun) is read without taking the write lock.
        entry = self.get(key)
        if entry is not None:
            return entry
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

    def _claim_in_transaction(self, key: AnswerKey, ttl_s: float) -> JournalEntry | Claim:
        entry = self._get_unlocked(key)
        if entry is not None:
            return entry
        row = self._conn.execute(f"SELECT host, pid, expires_at FROM answer_leases WHERE {_KEY}", key).fetchone()
        if row is not None and lease_alive(row[0], row[1], row[2] - time.time()):
            return Claim.WAIT
        self._conn.execute(
            "INSERT OR REPLACE INTO answer_leases VALUES (?,?,?,?,?,?,?,?)",
            (*key, self.owner, HOST, os.getpid(), time.time() + ttl_s),
        )
        return Claim.ASK

    def release(self, key: AnswerKey) -> None:
        """Give up this journal's lease on a key (its request failed): another runner may ask."""
        try:
            with self._lock:
                self._conn.execute(f"DELETE FROM answer_leases WHERE {_KEY} AND owner=?", (*key, self.owner))
        except sqlite3.Error:
            pass  # the lease expires on its own

    def _put(self, key: AnswerKey, entry: JournalEntry) -> None:
        row = (
            *key,
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
                self._conn.execute("INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?)", row)
                self._conn.execute(f"DELETE FROM answer_leases WHERE {_KEY}", key)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def served_id(self, endpoint: str, model_name: str) -> str | None:
        """The id last chosen for a model at an endpoint (see ``ChatEvaluator.setup``)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT model_id FROM served_ids WHERE endpoint=? AND model_name=?", (endpoint, model_name)
            ).fetchone()
        return row[0] if row else None

    def record_served_id(self, endpoint: str, model_name: str, model_id: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT OR REPLACE INTO served_ids VALUES (?,?,?,?)", (endpoint, model_name, model_id, now)
                )
        except sqlite3.Error as exc:
            raise self._failure(exc, "cannot record the served model id") from None

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


HOST = socket.gethostname()


def lease_alive(host: str, pid: int, remaining_s: float) -> bool:
    """Whether a lease still holds: not expired, and its process alive where that can be seen."""
    if remaining_s <= 0:
        return False
    if host != HOST:
        return True
    return process_alive(pid)  # False: its process died holding it


class Journal(Protocol):
    """What the engine needs of a response journal (SQLite here, or ``journal_postgres``)."""

    owner: str

    def get(self, key: AnswerKey) -> JournalEntry | None: ...
    def put(self, key: AnswerKey, entry: JournalEntry) -> None: ...
    def claim(self, key: AnswerKey, ttl_s: float) -> JournalEntry | Claim: ...
    def release(self, key: AnswerKey) -> None: ...
    def served_id(self, endpoint: str, model_name: str) -> str | None: ...
    def record_served_id(self, endpoint: str, model_name: str, model_id: str) -> None: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def layout_journal(layout: HomeLayout) -> Journal:
    """The journal of a home: ``DEFAKE_JOURNAL_URL`` where set, else SQLite under the home."""
    return open_journal(layout.journal_url) if layout.journal_url else ResponseJournal(layout.journal)


def open_journal(url: str) -> Journal:
    """The journal at ``url`` (``DEFAKE_JOURNAL_URL``): ``postgresql://…``, or ``sqlite:///path``."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres"):
        from defake_pipeline.evaluation.journal_postgres import PostgresJournal  # only the scaled set-up needs it

        return PostgresJournal(url)
    if scheme == "sqlite" and url.startswith("sqlite:///"):
        return ResponseJournal(Path(url.removeprefix("sqlite:///")))
    raise JournalWriteError(
        # A libpq "key=value" string may hold a password, and only a URL's can be masked.
        f"DEFAKE_JOURNAL_URL: {repr(shown_url(url)) if '://' in url else 'the value'} is neither "
        "postgresql://user:password@host:port/db nor sqlite:///path"
    )
