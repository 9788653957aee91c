"""OpenAI's Batch API, through the SDK's ``files`` and ``batches`` calls: batch files
uploaded and started, open batches looked at, and the answers of those that ended journaled."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import openai

from defake_pipeline.endpoints.bounded import MAX_RESPONSE_BYTES, RefusedBodyError, bound_sync_response_body
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.errors import DefakeError, ModelConfigError
from defake_pipeline.evaluation.batch import BATCH_ENDPOINT, ENDED, BatchFiles, BatchOutcome, journal_batch_lines
from defake_pipeline.evaluation.batch_records import OPEN, SUBMITTING, BatchRecord, BatchRecords
from defake_pipeline.evaluation.journal import Journal, layout_journal
from defake_pipeline.warehouse.layout import HomeLayout


def batch_client(spec: ModelSpec, api_key: str | None) -> openai.OpenAI:
    """The SDK client for a model's files and batches. Redirects are not followed (a 307 would
    send the images elsewhere); bodies are held to the chat road's bounds; the SDK retries its
    own calls, which are idempotent reads or create-once writes the record guards."""
    if spec.backend == "openai" and not api_key:
        raise ModelConfigError(f"model {spec.name!r} needs OPENAI_API_KEY, which is not set")
    return openai.OpenAI(
        api_key=api_key or "no-key",
        base_url=spec.resolved_base_url(),
        timeout=spec.timeout_s,
        max_retries=spec.max_retries,
        http_client=openai.DefaultHttpxClient(
            follow_redirects=False, event_hooks={"response": [bound_sync_response_body(spec.timeout_s)]}
        ),
    )


def submit_batches(
    client: openai.OpenAI, records: BatchRecords, spec: ModelSpec, partition_key: str, files: BatchFiles
) -> list[str]:
    """Upload each file and start its batch; returns the batch ids."""
    endpoint = str(client.base_url).rstrip("/")
    ids = []
    for path, listed in files.files:
        # Another run may have sent some of these keys while this one read its images: those
        # lines are left out, so an answer is not paid for twice.
        requests = files.without(path, listed, records.held_keys())
        if not requests:
            continue
        with path.open("rb") as handle:
            uploaded = client.files.create(file=(path.name, handle), purpose="batch")
        file_key = f"{SUBMITTING}:{uploaded.id}"
        records.record(file_key, endpoint, spec.name, partition_key, requests, status=SUBMITTING)
        ids.append(_create(client, records, file_key, uploaded.id, partition_key))
    return ids


def _create(client: openai.OpenAI, records: BatchRecords, file_key: str, file_id: str, partition_key: str) -> str:
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint=BATCH_ENDPOINT,
        completion_window="24h",
        metadata={"defake_partition": partition_key[:512]},
    )
    records.created(file_key, batch.id, batch.status)
    return batch.id


def _resume_submitting(client: openai.OpenAI, records: BatchRecords, record: BatchRecord) -> None:
    """A batch whose creation a dead process did not see through: adopted if the endpoint made
    it (listed with its input file), else created now."""
    file_id = record.batch_id.removeprefix(f"{SUBMITTING}:")
    for batch in client.batches.list(limit=100).data:  # the newest: it was made moments before
        if batch.input_file_id == file_id:
            records.created(record.batch_id, batch.id, batch.status)
            return
    _create(client, records, record.batch_id, file_id, record.partition_key)


# A batch file must arrive at this many lines a second at least, after the model's timeout:
# about 150 kB/s, so a file that trickles in cannot hold a look (the sensor's tick) for hours.
MIN_LINES_PER_S = 100


class BatchFileError(DefakeError):
    """A batch's output or error file that is not read to its end: the batch is looked at again."""


def _file_lines(client: openai.OpenAI, file_id: str | None, max_lines: int, timeout_s: float) -> Iterator[str]:
    """The lines of a batch file, streamed within bounds: a line is one answer (held to the
    direct road's bound on a body), a file holds a line per request at most, and it must arrive
    in time. The lines before a bound is met are yielded, and so journaled."""
    if not file_id:
        return
    limit_s = timeout_s + max_lines / MIN_LINES_PER_S
    with client.files.with_streaming_response.content(file_id) as response:
        lines = _raw_lines(response.iter_bytes(), limit_s, f"batch file {file_id}")
        for number, line in enumerate(lines, 1):
            if number > max_lines:
                raise BatchFileError(f"batch file {file_id} has more lines than its batch has requests ({max_lines})")
            yield line.decode("utf-8", "replace")


def _raw_lines(chunks: Iterator[bytes], limit_s: float, what: str) -> Iterator[bytes]:
    deadline, pending = time.monotonic() + limit_s, bytearray()
    for chunk in chunks:
        pending += chunk
        if b"\n" in chunk:
            *lines, rest = bytes(pending).split(b"\n")
            pending = bytearray(rest)
            yield from lines
        if len(pending) > MAX_RESPONSE_BYTES:
            raise BatchFileError(f"{what} has a line over {MAX_RESPONSE_BYTES >> 20} MB")
        if time.monotonic() > deadline:
            raise BatchFileError(f"{what} was not read within {limit_s:.0f} s")
    if pending.strip():
        yield bytes(pending)


def poll_batch(
    client: openai.OpenAI, records: BatchRecords, journal: Journal, spec: ModelSpec, record: BatchRecord
) -> BatchOutcome | None:
    """Look at one open batch: its progress is recorded; once it has ended, its answers are
    journaled and its outcome returned (None while it runs)."""
    if record.status == SUBMITTING:
        _resume_submitting(client, records, record)
        return None
    batch = client.batches.retrieve(record.batch_id)
    counts = batch.request_counts
    if batch.status not in ENDED:
        answered = counts.completed if counts else 0
        records.progress(record.batch_id, batch.status, answered, counts.failed if counts else 0)
        return None
    requests = records.requests(record.batch_id)
    outcome = BatchOutcome()
    for file_id in (batch.output_file_id, batch.error_file_id):
        lines = _file_lines(client, file_id, len(requests), spec.timeout_s)
        journal_batch_lines(spec, journal, requests, lines, record.batch_id, outcome)
    reason = "; ".join(e.message or "" for e in (batch.errors.data or [])) if batch.errors else ""
    for custom_id in requests.keys() - outcome.outcomes.keys():
        # A failed batch (its file was refused) reached no line: its error counts against retries.
        status = ("failed", f"the batch failed: {reason or 'no reason given'}"[:500])
        outcome.outcomes[custom_id] = status if batch.status == "failed" else ("unfinished", batch.status)
        outcome.failed += batch.status == "failed"
        outcome.unreached += batch.status != "failed"
    records.end(record.batch_id, batch.status, outcome.outcomes, outcome.cost_usd)
    return outcome


def open_records(records: BatchRecords) -> list[BatchRecord]:
    return [r for r in records.batches() if r.status in (OPEN, SUBMITTING)]


@dataclass(frozen=True)
class BatchPoll:
    """One open batch looked at: its record after the look, how it ended (None: still running),
    and why it could not be looked at (the endpoint unreachable, say), if it could not."""

    record: BatchRecord
    outcome: BatchOutcome | None
    problem: str = ""


def poll_open_batches(layout: HomeLayout, spec_of: Callable[[str], ModelSpec], api_key: str | None) -> list[BatchPoll]:
    """Look at every open batch once; answers of those that ended are journaled."""
    records = BatchRecords(layout)
    journal = layout_journal(layout)
    polls = []
    try:
        for record in open_records(records):
            try:
                spec = spec_of(record.model)
                client = batch_client(spec, api_key)
            except DefakeError as exc:  # its entry gone from models.toml, or no key: said, looked at again
                polls.append(BatchPoll(record, None, str(exc)))
                continue
            try:
                polls.append(BatchPoll(record, poll_batch(client, records, journal, spec, record)))
            except openai.APIError as exc:  # the next look tries again; nothing is lost
                polls.append(BatchPoll(record, None, f"{type(exc).__name__}: {exc}"[:300]))
            except (BatchFileError, RefusedBodyError) as exc:  # answers read before it are journaled
                polls.append(BatchPoll(record, None, str(exc)))
            finally:
                client.close()
        now = {r.batch_id: r for r in records.batches()}  # progress and ends as just recorded
        polls = [replace(p, record=now.get(p.record.batch_id, p.record)) for p in polls]
    finally:
        journal.close()
        records.close()
    return polls


def wait_for_batches(
    layout: HomeLayout,
    spec_of: Callable[[str], ModelSpec],
    api_key: str | None,
    model: str,
    on_progress: Callable[[int, int], None],
    interval_s: float,
    on_problem: Callable[[str], None],
) -> None:
    """Look at the open batches every ``interval_s`` until none of ``model``'s is open;
    ``on_progress`` gets the requests done and in all, over its batches looked at, and
    ``on_problem`` each new reason a batch could not be looked at in full."""
    watched: dict[str, BatchRecord] = {}
    said: set[str] = set()
    while True:
        polls = [p for p in poll_open_batches(layout, spec_of, api_key) if p.record.model == model]
        watched |= {p.record.batch_id: p.record for p in polls}
        for problem in [f"{p.record.batch_id}: {p.problem}" for p in polls if p.problem]:
            if problem not in said:
                said.add(problem)
                on_problem(problem)
        on_progress(sum(r.n_done for r in watched.values()), sum(r.n_requests for r in watched.values()))
        if all(p.outcome is not None for p in polls):
            return
        time.sleep(interval_s)


def open_batch_lines(layout: HomeLayout, partitions: set[str]) -> dict[str, str]:
    """A line for each of these partitions (``model|prompt``) with open batches."""
    records = BatchRecords(layout)
    try:
        lines: dict[str, list[str]] = {}
        for r in open_records(records):
            if r.partition_key in partitions:
                lines.setdefault(r.partition_key, []).append(f"{r.batch_id} ({r.progress()})")
        return {key: f"{key}: {', '.join(batches)}" for key, batches in lines.items()}
    finally:
        records.close()
