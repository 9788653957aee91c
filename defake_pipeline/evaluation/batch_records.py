"""Batches sent through an endpoint's Batch API (or exported for ``vllm run-batch``), recorded
in the journal's own store (SQLite, or PostgreSQL where ``DEFAKE_JOURNAL_URL`` says).

Each batch is recorded with the journal key of every request in it, the moment it is created,
so a restarted daemon or CLI resumes watching it and never submits those keys again while it
is open. When it ends, each request's outcome is recorded: answered (the answer is in the
journal), failed (with the error: it counts against the model's retries), or unfinished (an
expired or cancelled batch did not reach it: it is sent again, at no extra count).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from defake_pipeline.evaluation.journal import AnswerKey
from defake_pipeline.evaluation.journal_store import JournalStore, now_text
from defake_pipeline.warehouse.layout import HomeLayout

OPEN = "open"  # the batch is at the endpoint, not ended yet
# Its input file is uploaded and the batch is being created. Recorded under the file's id first,
# so a process that dies before it hears the batch's id leaves a record to find it by.
SUBMITTING = "submitting"
EXPORTED = "exported"  # written for ``vllm run-batch``; its answers come back by ``mllmdf batch import``

_TABLES = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    status TEXT NOT NULL,
    api_status TEXT NOT NULL,
    n_requests INTEGER NOT NULL,
    n_answered INTEGER NOT NULL DEFAULT 0,
    n_failed INTEGER NOT NULL DEFAULT 0,
    cost_usd {real} NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    ended_at TEXT
);
CREATE TABLE IF NOT EXISTS batch_requests (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE INDEX IF NOT EXISTS batch_requests_custom_id ON batch_requests (custom_id);
"""


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    endpoint: str
    model: str  # the model entry's name
    partition_key: str  # model|prompt whose requests it holds
    status: str  # open, exported, or how it ended: completed, expired, cancelled, failed
    api_status: str  # the endpoint's last word on it (validating, in_progress, finalizing, …)
    n_requests: int
    n_answered: int
    n_failed: int
    cost_usd: float
    created_at: str
    ended_at: str | None

    @property
    def n_done(self) -> int:
        return self.n_answered + self.n_failed

    def progress(self) -> str:
        return f"{self.api_status}, {self.n_done}/{self.n_requests} requests done"


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    key: AnswerKey
    input_tokens: int  # estimated, for an answer whose usage is missing


class BatchRecords(JournalStore):
    """The record of batches, in the journal's database."""

    TABLES = _TABLES
    WHAT = "the record of batches"

    def record(
        self, batch_id: str, endpoint: str, model: str, partition_key: str, requests: list[BatchRequest], status=OPEN
    ) -> None:
        """A batch and the key of every request in it, before anything else can happen to it."""
        rows = [(batch_id, r.custom_id, *r.key, r.input_tokens, OPEN, None) for r in requests]
        self._run("INSERT INTO batch_requests VALUES (?,?,?,?,?,?,?,?,?)", many=rows)
        self._run(
            "INSERT INTO batches VALUES (?,?,?,?,?,?,?,0,0,0,?,NULL)",
            (batch_id, endpoint, model, partition_key, status, status, len(requests), now_text()),
        )

    def held_keys(self) -> set[AnswerKey]:
        """Keys of requests in open batches: not to be sent again until they end."""
        rows = self._run(
            "SELECT r.endpoint, r.model_id, r.request_hash, r.image_sha256 FROM batch_requests r "
            "JOIN batches b ON b.batch_id = r.batch_id WHERE b.status IN (?, ?) AND r.outcome = ?",
            (OPEN, SUBMITTING, OPEN),
        )
        return {AnswerKey(*row) for row in rows}

    def failures(self) -> dict[AnswerKey, tuple[int, str]]:
        """How many batches failed each key, with one of the errors they gave."""
        rows = self._run(
            "SELECT endpoint, model_id, request_hash, image_sha256, count(*), max(error) FROM batch_requests "
            "WHERE outcome = 'failed' GROUP BY endpoint, model_id, request_hash, image_sha256"
        )
        return {AnswerKey(*row[:4]): (row[4], row[5] or "") for row in rows}

    def batches(self, status: str | None = None) -> list[BatchRecord]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._run(f"SELECT * FROM batches {where} ORDER BY created_at, batch_id", params)
        return [BatchRecord(*row) for row in rows]

    def requests(self, batch_id: str) -> dict[str, BatchRequest]:
        """A batch's requests by custom_id."""
        rows = self._run(
            "SELECT custom_id, endpoint, model_id, request_hash, image_sha256, input_tokens FROM batch_requests "
            "WHERE batch_id = ?",
            (batch_id,),
        )
        return {row[0]: BatchRequest(row[0], AnswerKey(*row[1:5]), row[5]) for row in rows}

    def exported_requests(self, custom_ids: Iterable[str]) -> dict[str, tuple[str, str, BatchRequest]]:
        """Requests of exported batches by custom_id, each with its batch and model."""
        wanted, found = list(dict.fromkeys(custom_ids)), {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._run(
                "SELECT r.custom_id, r.endpoint, r.model_id, r.request_hash, r.image_sha256, r.input_tokens, "
                f"b.batch_id, b.model FROM batch_requests r JOIN batches b ON b.batch_id = r.batch_id "
                f"WHERE b.status = ? AND r.custom_id IN ({','.join('?' * len(chunk))})",
                (EXPORTED, *chunk),
            )
            for row in rows:
                found[row[0]] = (row[6], row[7], BatchRequest(row[0], AnswerKey(*row[1:5]), row[5]))
        return found

    def created(self, file_key: str, batch_id: str, api_status: str) -> None:
        """The batch recorded under ``file_key`` while it was created is ``batch_id``, open."""
        self._run("UPDATE batch_requests SET batch_id = ? WHERE batch_id = ?", (batch_id, file_key))
        self._run(
            "UPDATE batches SET batch_id = ?, status = ?, api_status = ? WHERE batch_id = ?",
            (batch_id, OPEN, api_status, file_key),
        )

    def progress(self, batch_id: str, api_status: str, answered: int, failed: int) -> None:
        self._run(
            "UPDATE batches SET api_status = ?, n_answered = ?, n_failed = ? WHERE batch_id = ?",
            (api_status, answered, failed, batch_id),
        )

    def end(self, batch_id: str, status: str, outcomes: dict[str, tuple[str, str | None]], cost_usd: float) -> None:
        """How a batch ended: each request's outcome (answered, failed with its error, or
        unfinished) and what its answers cost."""
        self._run(
            "UPDATE batch_requests SET outcome = ?, error = ? WHERE batch_id = ? AND custom_id = ?",
            many=[(outcome, error, batch_id, custom_id) for custom_id, (outcome, error) in outcomes.items()],
        )
        answered = sum(outcome == "answered" for outcome, _ in outcomes.values())
        failed = sum(outcome == "failed" for outcome, _ in outcomes.values())
        self._run(
            "UPDATE batches SET status = ?, api_status = ?, n_answered = ?, n_failed = ?, cost_usd = ?, ended_at = ? "
            "WHERE batch_id = ?",
            (status, status, answered, failed, cost_usd, now_text(), batch_id),
        )


def open_batch_keys(layout: HomeLayout) -> set[AnswerKey]:
    """The keys of the requests open batches hold (``BatchRecords.held_keys``)."""
    records = BatchRecords(layout)
    try:
        return records.held_keys()
    finally:
        records.close()
