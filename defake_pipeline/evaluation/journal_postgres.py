"""The response journal on PostgreSQL, for runs on machines that share no disk.

The same keys, tables and semantics as the SQLite journal (``journal.py``). Leases are timed
by the database's clock, so workers on different machines agree on when one expires; the
process check of a lease applies only on its own host. A worker killed holding leases leaves
them to expire, and another worker then takes the keys.

psycopg2 is the driver: ``dagster-postgres`` (the Dagster instance on Postgres) requires it and
runs on it (``scheme: postgresql+psycopg2`` in deploy/dagster.yaml: its LISTEN/NOTIFY fails on
psycopg 3), so a deployment carries one PostgreSQL driver, not two.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

import psycopg2

from defake_pipeline.errors import JournalWriteError
from defake_pipeline.evaluation.journal import HOST, AnswerKey, Claim, JournalEntry, journal_tables, lease_alive
from defake_pipeline.text import shown_url, without_password

_SCHEMA = (
    journal_tables("DOUBLE PRECISION", "TIMESTAMPTZ NOT NULL DEFAULT now()")
    + """
-- A claim in one round trip (see PostgresJournal.claim). Each statement of a PL/pgSQL function
-- sees what was committed before it ran, so the second look at answers sees an answer stored
-- while the lease was being taken.
CREATE OR REPLACE FUNCTION defake_claim(
    k_endpoint TEXT, k_model_id TEXT, k_request_hash TEXT, k_image_sha256 TEXT,
    k_owner TEXT, k_host TEXT, k_pid INTEGER, k_ttl_s DOUBLE PRECISION)
RETURNS TABLE (r_response TEXT, r_prompt_tokens INTEGER, r_completion_tokens INTEGER,
               r_latency_s DOUBLE PRECISION, r_extra TEXT,
               r_holder TEXT, r_host TEXT, r_pid INTEGER, r_remaining_s DOUBLE PRECISION)
LANGUAGE plpgsql AS $$
DECLARE
    taken TEXT;
BEGIN
    RETURN QUERY SELECT a.response, a.prompt_tokens, a.completion_tokens, a.latency_s, a.extra,
            NULL::TEXT, NULL::TEXT, NULL::INTEGER, NULL::DOUBLE PRECISION
        FROM answers a WHERE a.endpoint=k_endpoint AND a.model_id=k_model_id
            AND a.request_hash=k_request_hash AND a.image_sha256=k_image_sha256;
    IF FOUND THEN RETURN; END IF;
    INSERT INTO answer_leases AS l VALUES (k_endpoint, k_model_id, k_request_hash, k_image_sha256,
            k_owner, k_host, k_pid, extract(epoch FROM clock_timestamp()) + k_ttl_s)
        ON CONFLICT (endpoint, model_id, request_hash, image_sha256) DO UPDATE SET
            owner=EXCLUDED.owner, host=EXCLUDED.host, pid=EXCLUDED.pid, expires_at=EXCLUDED.expires_at
        WHERE l.expires_at <= extract(epoch FROM clock_timestamp())
        RETURNING l.owner INTO taken;
    IF taken IS NULL THEN
        RETURN QUERY SELECT NULL::TEXT, NULL::INTEGER, NULL::INTEGER, NULL::DOUBLE PRECISION, NULL::TEXT,
                l.owner, l.host, l.pid, l.expires_at - extract(epoch FROM clock_timestamp())
            FROM answer_leases l WHERE l.endpoint=k_endpoint AND l.model_id=k_model_id
                AND l.request_hash=k_request_hash AND l.image_sha256=k_image_sha256;
        IF NOT FOUND THEN  -- it ended in between: the caller tries again
            RETURN QUERY SELECT NULL::TEXT, NULL::INTEGER, NULL::INTEGER, NULL::DOUBLE PRECISION, NULL::TEXT,
                ''::TEXT, ''::TEXT, 0, 0::DOUBLE PRECISION;
        END IF;
        RETURN;
    END IF;
    RETURN QUERY SELECT a.response, a.prompt_tokens, a.completion_tokens, a.latency_s, a.extra,
            NULL::TEXT, NULL::TEXT, NULL::INTEGER, NULL::DOUBLE PRECISION
        FROM answers a WHERE a.endpoint=k_endpoint AND a.model_id=k_model_id
            AND a.request_hash=k_request_hash AND a.image_sha256=k_image_sha256;
    IF FOUND THEN
        DELETE FROM answer_leases l WHERE l.endpoint=k_endpoint AND l.model_id=k_model_id
            AND l.request_hash=k_request_hash AND l.image_sha256=k_image_sha256 AND l.owner=k_owner;
    END IF;
END $$;
"""
)
_KEY = "endpoint=%s AND model_id=%s AND request_hash=%s AND image_sha256=%s"
_NOW = "extract(epoch FROM clock_timestamp())"
_CONNECT_TIMEOUT_S = 10
# Every statement is a key lookup or a one-row write: one that takes this long is stuck on a
# lock or a dead server, and the run stops with a one-line error instead of hanging.
_STATEMENT_TIMEOUT_MS = 30_000


def create_tables(conn, statements: list[str]) -> None:
    """Run ``CREATE TABLE IF NOT EXISTS`` statements under one advisory lock for the database:
    the statement is not safe against itself, and two workers opening a new database at once
    would both create a table, one failing on pg_type's unique index."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtext('defake answers schema'))")
        try:
            for statement in statements:
                cur.execute(statement)
        finally:
            cur.execute("SELECT pg_advisory_unlock(hashtext('defake answers schema'))")


class PostgresJournal:
    """A response journal shared by every worker that reaches one PostgreSQL database."""

    def __init__(self, url: str):
        self.url = url
        self.where = shown_url(url)
        self._lock = threading.Lock()
        self.owner = uuid.uuid4().hex
        try:
            self._conn = psycopg2.connect(
                url, connect_timeout=_CONNECT_TIMEOUT_S, options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}"
            )
            self._conn.autocommit = True
            create_tables(self._conn, [_SCHEMA])
        except psycopg2.Error as exc:
            raise self._failure(exc, "cannot open it") from None

    def _failure(self, exc: Exception, doing: str) -> JournalWriteError:
        detail = without_password(" ".join(str(exc).split()), self.url)
        return JournalWriteError(
            f"{self.where}: the response journal: {doing} ({detail}); no further requests are sent, "
            "every answer stored before is kept"
        )

    def _run(self, doing: str, sql: str, params: tuple = (), fetch: bool = True) -> Any:
        try:
            with self._lock, self._conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchone() if fetch else None
        except psycopg2.Error as exc:
            raise self._failure(exc, doing) from None

    def get(self, key: AnswerKey) -> JournalEntry | None:
        row = self._run(
            "cannot read an answer",
            f"SELECT response, prompt_tokens, completion_tokens, latency_s, extra FROM answers WHERE {_KEY}",
            tuple(key),
        )
        return _entry(row) if row else None

    def put(self, key: AnswerKey, entry: JournalEntry) -> None:
        """Store one answer and end its lease in one statement: a waiting worker sees the lease
        or the answer, never neither."""
        self._run(
            "cannot store an answer",
            "WITH stored AS (INSERT INTO answers (endpoint, model_id, request_hash, image_sha256, response, "
            "prompt_tokens, completion_tokens, latency_s, extra) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (endpoint, model_id, request_hash, image_sha256) DO UPDATE SET "
            "response=EXCLUDED.response, prompt_tokens=EXCLUDED.prompt_tokens, "
            "completion_tokens=EXCLUDED.completion_tokens, latency_s=EXCLUDED.latency_s, extra=EXCLUDED.extra) "
            f"DELETE FROM answer_leases WHERE {_KEY}",
            (
                *key,
                entry.response,
                entry.prompt_tokens,
                entry.completion_tokens,
                entry.latency_s,
                json.dumps(entry.extra) if entry.extra else None,
                *key,
            ),
            fetch=False,
        )

    def claim(self, key: AnswerKey, ttl_s: float) -> JournalEntry | Claim:
        """As ``ResponseJournal.claim``: the answer, or ASK (this journal took the lease), or WAIT.

        One round trip (``defake_claim``): at 64 requests in flight every call on the event
        loop counts. No row: the lease is this journal's now."""
        row = self._run(
            "cannot record a request in flight",
            "SELECT * FROM defake_claim(%s,%s,%s,%s,%s,%s,%s,%s)",
            (*key, self.owner, HOST, os.getpid(), ttl_s),
        )
        if row is None:
            return Claim.ASK
        if row[5] is None:
            return _entry(row)
        if lease_alive(row[6], row[7], row[8]):
            return Claim.WAIT
        # Its process died on this host (or it just expired): drop that lease and try again.
        self._run(
            "cannot record a request in flight",
            f"DELETE FROM answer_leases WHERE {_KEY} AND owner=%s",
            (*key, row[5]),
            fetch=False,
        )
        return self.claim(key, ttl_s)

    def release(self, key: AnswerKey) -> None:
        try:
            self._run("", f"DELETE FROM answer_leases WHERE {_KEY} AND owner=%s", (*key, self.owner), fetch=False)
        except JournalWriteError:
            pass  # the lease expires on its own

    def served_id(self, endpoint: str, model_name: str) -> str | None:
        row = self._run(
            "cannot read the served model id",
            "SELECT model_id FROM served_ids WHERE endpoint=%s AND model_name=%s",
            (endpoint, model_name),
        )
        return row[0] if row else None

    def record_served_id(self, endpoint: str, model_name: str, model_id: str) -> None:
        self._run(
            "cannot record the served model id",
            "INSERT INTO served_ids (endpoint, model_name, model_id) VALUES (%s,%s,%s) "
            "ON CONFLICT (endpoint, model_name) DO UPDATE SET model_id=EXCLUDED.model_id, chosen_at=now()",
            (endpoint, model_name, model_id),
            fetch=False,
        )

    def count(self) -> int:
        return self._run("cannot count answers", "SELECT count(*) FROM answers")[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _entry(row: tuple) -> JournalEntry:
    return JournalEntry(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else None)
