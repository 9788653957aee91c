"""Journal misses sent as batch files: OpenAI's Batch API, or ``vllm run-batch`` offline.

A run in batch mode walks the run's own road (decorators, prompt, encoded image) and looks
each request up in the journal. A request the journal cannot answer, and no open batch holds,
becomes a line of a batch file, its ``custom_id`` the journal key; the image waits, and the run
publishes nothing for its partition. The files are uploaded with the SDK's ``files.create`` and
started with ``batches.create`` (``/v1/chat/completions``, ``completion_window`` 24h), split at
the API's limits. When a batch ends, every answer in its output file goes to the journal,
priced at the batch price, and every line of its error file is a failed request, asked again in
the next round until the model's retries are spent. Lines an expired or cancelled batch did not
reach are asked again at no count. The partition's next run then finds every answer journaled.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from defake_pipeline.endpoints.chat import answered_by_another_model, reply_of_completion, with_data_urls
from defake_pipeline.endpoints.completions import Completion, parse_completion
from defake_pipeline.endpoints.registry import ModelSpec
from defake_pipeline.endpoints.retry import EmptyResponseError, NonJSONBodyError
from defake_pipeline.endpoints.tokens import request_tokens
from defake_pipeline.evaluation.batch_records import BatchRecords, BatchRequest
from defake_pipeline.evaluation.engine import ChatEvaluator
from defake_pipeline.evaluation.estimate import setup_offline
from defake_pipeline.evaluation.evaluator import WaitingForBatch
from defake_pipeline.evaluation.journal import AnswerKey, Journal, JournalEntry, journal_entry
from defake_pipeline.evaluation.lazy_image import encode_images, lazy_images
from defake_pipeline.prompting.spec import LoadedPrompt
from defake_pipeline.records import ImageJob, Prediction

BATCH_ENDPOINT: Final = "/v1/chat/completions"
# The Batch API's limits on one input file.
MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
ENDED = ("completed", "expired", "cancelled", "failed")
# Lines an ended batch did not reach: sent again in the next round, not counted as failures.
UNREACHED = ("batch_expired", "batch_cancelled")


def custom_id_of(key: AnswerKey) -> str:
    """A request's id in a batch file: its journal key within the batch's endpoint and model."""
    return f"{key.request_hash}.{key.image_sha256}"


class BatchFiles:
    """Batch input files written as lines come, each within the API's limits."""

    def __init__(self, folder: Path, max_lines: int = MAX_LINES, max_bytes: int = MAX_FILE_BYTES):
        self.folder, self.max_lines, self.max_bytes = folder, max_lines, max_bytes
        self.files: list[tuple[Path, list[BatchRequest]]] = []
        self._size = 0

    def add(self, request: BatchRequest, body: dict) -> None:
        line = json.dumps({"custom_id": request.custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": body})
        raw = (line + "\n").encode()
        if not self.files or len(self.files[-1][1]) >= self.max_lines or self._size + len(raw) > self.max_bytes:
            self.files.append((self.folder / f"batch-{len(self.files) + 1}.jsonl", []))
            self._size = 0
        path, requests = self.files[-1]
        with path.open("ab") as handle:
            handle.write(raw)
        requests.append(request)
        self._size += len(raw)

    def without(self, path: Path, requests: list[BatchRequest], held: set[AnswerKey]) -> list[BatchRequest]:
        """The file's requests less those whose keys are ``held``; the file is rewritten to match."""
        kept = [r for r in requests if r.key not in held]
        if len(kept) < len(requests):
            wanted = {r.custom_id for r in kept}
            lines = [
                line for line in path.read_bytes().splitlines(keepends=True) if json.loads(line)["custom_id"] in wanted
            ]
            path.write_bytes(b"".join(lines))
        return kept

    @property
    def n_requests(self) -> int:
        return sum(len(requests) for _, requests in self.files)


class _FailedInBatches(Exception):
    """The image's request failed in as many batches as the model's retries allow."""


class BatchEvaluator(ChatEvaluator):
    """A chat evaluator that sends nothing directly: journal misses become batch lines."""

    def __init__(
        self,
        spec: ModelSpec,
        prompt: LoadedPrompt,
        journal: Journal,
        records: BatchRecords,
        files: BatchFiles,
        api_key: str | None,
        offline: bool = False,
        generation: int = 0,
    ):
        super().__init__(spec, prompt, journal, api_key or "no-key-needed-to-write-a-batch", generation=generation)
        self.records, self.files = records, files
        self.offline = offline  # exported for ``vllm run-batch``: the server may not be running
        self._failures: dict[AnswerKey, tuple[int, str]] = {}
        self._lined: set[str] = set()

    async def setup(self) -> None:
        await (setup_offline(self, super().setup) if self.offline else super().setup())
        self.held = await asyncio.to_thread(self.records.held_keys)
        self._failures = await asyncio.to_thread(self.records.failures)

    async def predict(self, job: ImageJob) -> Prediction:
        try:
            return await super().predict(job)
        except _FailedInBatches as exc:
            return self.error_prediction(job, str(exc))

    async def _answer(self, wire: list[dict], key: AnswerKey, params: dict) -> tuple[JournalEntry, bool]:
        entry = await asyncio.to_thread(self.journal.get, key)
        if entry is not None:
            return entry, False
        if key in self.held:
            raise WaitingForBatch
        failed, error = self._failures.get(key, (0, ""))
        if failed > self.spec.max_retries:
            raise _FailedInBatches(f"failed in {failed} batches: {error}")
        custom_id = custom_id_of(key)
        if custom_id not in self._lined:  # a second image of the same content waits for the same line
            self._lined.add(custom_id)
            await asyncio.to_thread(encode_images, lazy_images(wire))
            body = {"model": self.model_id, "messages": with_data_urls(wire), **params}
            tokens = request_tokens(wire, 0, self.spec.image_patch_px)
            self.files.add(BatchRequest(custom_id, key, tokens), body)
        raise WaitingForBatch


@dataclass
class BatchOutcome:
    """What reading an ended batch (or an imported output file) gave."""

    answered: int = 0
    failed: int = 0
    unreached: int = 0
    cost_usd: float = 0.0
    outcomes: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def journal_batch_lines(
    spec: ModelSpec,
    journal: Journal,
    requests: dict[str, BatchRequest],
    lines: Iterable[str],
    batch_id: str,
    outcome: BatchOutcome,
) -> None:
    """Output or error lines of a batch file (OpenAI's format, which ``vllm run-batch`` writes
    too): each answer to the journal, each error as a failed or unreached request."""
    for raw in lines:
        try:
            line = json.loads(raw)
            request = requests.get(str(line.get("custom_id")))
        except (ValueError, AttributeError):  # not a line of the format: its request stays unanswered
            continue
        if request is None:
            continue  # not a request of this batch
        response, error = _object(line.get("response")), _object(line.get("error"))
        completion = _completion(response.get("body")) if response.get("status_code") == 200 else None
        if completion is not None and answered_by_another_model(spec, request.key.model_id, completion.served_model):
            outcome.failed += 1
            answered = f"answered by model {completion.served_model!r}, not {request.key.model_id!r}"
            outcome.outcomes[request.custom_id] = ("failed", f"{answered}; not kept"[:500])
        elif completion is not None:
            reply = reply_of_completion(spec, completion, 0.0, lambda: request.input_tokens)  # noqa: B023 - used at once
            journal.put(request.key, journal_entry(spec, reply, {"batch": True, "batch_id": batch_id}))
            outcome.answered += 1
            outcome.cost_usd += spec.cost_usd(reply.prompt_tokens, reply.completion_tokens, batch=True)
            outcome.outcomes[request.custom_id] = ("answered", None)
        elif error.get("code") in UNREACHED:
            outcome.unreached += 1
            outcome.outcomes[request.custom_id] = ("unfinished", str(error.get("code")))
        else:
            body_error = _object(_object(response.get("body")).get("error"))
            text = body_error.get("message") or error.get("message") or "no answer"
            outcome.failed += 1
            outcome.outcomes[request.custom_id] = ("failed", f"HTTP {response.get('status_code', '-')}: {text}"[:500])


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _completion(body: object) -> Completion | None:
    """The completion in a batch line's 200 response; None where it holds none (then an error)."""
    try:
        return parse_completion("application/json", json.dumps(body).encode()) if isinstance(body, dict) else None
    except (EmptyResponseError, NonJSONBodyError, ValueError):
        return None


def temporary_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="defake-batch-")
