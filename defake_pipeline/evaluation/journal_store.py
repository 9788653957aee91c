"""Tables kept beside the journal's answers, in its own database (SQLite, or PostgreSQL where
``DEFAKE_JOURNAL_URL`` says): batches sent, and cache generations. Statements are written with
``?`` placeholders and run on either."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from defake_pipeline.errors import JournalWriteError
from defake_pipeline.text import shown_url, without_password
from defake_pipeline.warehouse.layout import HomeLayout


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


class JournalStore:
    """A connection to the journal's database, with this kind's tables (``TABLES``, ``{real}``
    standing for the floating-point type) created if missing."""

    TABLES: ClassVar[str] = ""
    WHAT: ClassVar[str] = "a table beside the journal"

    def __init__(self, layout: HomeLayout):
        url = layout.journal_url or ""
        self._lock = threading.Lock()
        self._postgres = bool(url) and url.partition("://")[0].lower() in ("postgresql", "postgres")
        self.where = shown_url(url) if url else str(layout.journal)
        self._url = url or ""
        try:
            if self._postgres:
                import psycopg2  # only the scaled set-up needs it

                from defake_pipeline.evaluation.journal_postgres import create_tables

                # Each statement is small: one that takes 30 s is stuck on a lock or a dead server.
                self._conn: Any = psycopg2.connect(url, connect_timeout=10, options="-c statement_timeout=30000")
                self._conn.autocommit = True
                create_tables(self._conn, _statements(self.TABLES.format(real="DOUBLE PRECISION")))
            else:
                path = Path(url.removeprefix("sqlite:///")) if url else layout.journal
                path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
                for statement in _statements(self.TABLES.format(real="REAL")):
                    self._execute(statement)
        except Exception as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: Exception) -> JournalWriteError:
        detail = without_password(" ".join(str(exc).split()), self._url) if self._url else str(exc)
        return JournalWriteError(f"{self.where}: {self.WHAT} cannot be read or written ({detail})")

    def _execute(self, sql: str, params: Sequence = (), many: Iterable[Sequence] | None = None) -> list[tuple]:
        if self._postgres:
            sql = sql.replace("?", "%s")
        with self._lock:
            cur = self._conn.cursor()
            try:
                if many is not None:  # one transaction: thousands of rows at once
                    if self._postgres:
                        self._conn.autocommit = False
                    else:
                        cur.execute("BEGIN IMMEDIATE")
                    try:
                        cur.executemany(sql, list(many))
                        self._conn.commit() if self._postgres else cur.execute("COMMIT")
                    except BaseException:
                        self._conn.rollback()
                        raise
                    finally:
                        if self._postgres:
                            self._conn.autocommit = True
                    return []
                cur.execute(sql, tuple(params))
                return list(cur.fetchall()) if cur.description else []
            finally:
                cur.close()

    def _run(self, sql: str, params: Sequence = (), many: Iterable[Sequence] | None = None) -> list[tuple]:
        try:
            return self._execute(sql, params, many)
        except (sqlite3.Error, OSError) as exc:
            raise self._failure(exc) from None
        except Exception as exc:  # psycopg2's errors, which only the scaled set-up imports
            if type(exc).__module__.startswith("psycopg2"):
                raise self._failure(exc) from None
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
