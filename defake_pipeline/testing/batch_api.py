"""OpenAI's Files and Batch APIs, as the test server speaks them.

- ``POST /v1/files`` (multipart, ``purpose=batch``) and ``GET /v1/files/{id}/content``;
- ``POST /v1/batches``, ``GET /v1/batches`` (the list), ``GET /v1/batches/{id}`` and
  ``POST /v1/batches/{id}/cancel``.

Written from OpenAI's published Batch API reference, not from the client's code: input lines
``{"custom_id", "method": "POST", "url", "body"}``; output lines ``{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}``; a batch that expires or is
cancelled returns what it finished, and its unfinished lines go to the error file with the code
``batch_expired`` or ``batch_cancelled``. A batch moves through ``validating``, ``in_progress``
and ``finalizing`` to its end, one step every ``BatchSettings.step_s`` seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as default_policy

from defake_pipeline.testing.answers import gzip_bomb

# The API's published limits on one input file.
MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
STEPS = ("validating", "in_progress", "finalizing")


@dataclass
class BatchSettings:
    enabled: bool = True  # False: no Batch API here (as on a vLLM server): those paths are 404
    step_s: float = 0.05  # each of validating, in_progress and finalizing lasts this long
    fail_share: float = 0.0  # this share of lines (by custom_id) fails once, into the error file
    expire_half: bool = False  # the next batch expires with the first half of its lines done
    # An output file as a hostile endpoint sends it: "endless" (its lines over and over),
    # "gzip_bomb" (one line inflating to gigabytes) or "trickle" (a byte every trickle_s).
    hostile_output: str = ""
    hostile_status: str = ""  # a batch's status (GET /v1/batches/{id}) sent the same ways
    trickle_s: float = 0.1
    # Counters, read by tests.
    n_files: int = 0
    n_batches: int = 0
    n_lines: int = 0  # lines answered, over every batch
    n_line_failures: int = 0
    created: list[dict] = field(default_factory=list)  # every batch object, as created


@dataclass
class StreamedBody:
    """A body sent in chunks as they are made (chunked), ``pause_s`` apart."""

    chunks: Iterator[bytes]
    encoding: str | None = None
    pause_s: float = 0.0


@dataclass
class _Batch:
    obj: dict
    lines: list[dict]
    started: float
    ends_as: str = "completed"  # or "expired"
    cancelled_at: float | None = None
    settled: bool = False


class BatchApi:
    """The files and batches a test server holds. ``completion`` turns a chat request body into
    the completion the server would answer it with."""

    def __init__(self, completion: Callable[[dict], dict]):
        self.settings = BatchSettings()
        self.completion = completion
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}
        self.failed_once: set[str] = set()
        self.outputs: set[str] = set()  # ids of the files the batches wrote

    def handles(self, path: str) -> bool:
        return self.settings.enabled and ("/files" in path or "/batches" in path)

    def get(self, path: str) -> tuple[int, dict | bytes | StreamedBody]:
        parts = path.partition("?")[0].rstrip("/").split("/")
        if parts[-1] == "batches":  # newest first, as the API lists them; one page holds them all here
            listed = [self._advance(b) for b in reversed(self.batches.values())]
            first, last = (listed[0]["id"], listed[-1]["id"]) if listed else (None, None)
            return 200, {"object": "list", "data": listed, "first_id": first, "last_id": last, "has_more": False}
        if "files" in parts and parts[-1] == "content":
            data = self.files.get(parts[-2])
            if data is None:
                return _not_found("file", parts[-2])
            if parts[-2] in self.outputs and self.settings.hostile_output:
                return 200, _hostile(self.settings.hostile_output, data, self.settings.trickle_s)
            return 200, data
        if "batches" in parts and parts[-1] != "batches":
            batch = self.batches.get(parts[-1])
            if batch is None:
                return _not_found("batch", parts[-1])
            if self.settings.hostile_status:
                status = json.dumps(self._advance(batch)).encode()
                return 200, _hostile(self.settings.hostile_status, status, self.settings.trickle_s)
            return 200, self._advance(batch)
        return _not_found("path", path)

    def post(self, path: str, content_type: str, raw: bytes) -> tuple[int, dict | bytes]:
        parts = path.rstrip("/").split("/")
        if parts[-1] == "files":
            return self._upload(content_type, raw)
        if parts[-1] == "batches":
            return self._create(json.loads(raw or b"{}"))
        if parts[-1] == "cancel" and parts[-2] in self.batches:
            batch = self.batches[parts[-2]]
            if batch.obj["status"] in STEPS:
                batch.cancelled_at = time.time()
                batch.obj["status"] = "cancelling"
            return 200, batch.obj
        return _not_found("path", path)

    def _upload(self, content_type: str, raw: bytes) -> tuple[int, dict]:
        message = BytesParser(policy=default_policy).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        if "file" not in fields or fields.get("purpose") is None:
            return _invalid("a file and its purpose are required")
        purpose = fields["purpose"].get_content().strip()
        data = bytes(fields["file"].get_payload(decode=True) or b"")
        if purpose != "batch":
            return _invalid(f"purpose {purpose!r} is not 'batch'")
        if len(data) > MAX_FILE_BYTES:
            return _invalid(f"file is {len(data)} bytes; the limit is {MAX_FILE_BYTES}")
        self.settings.n_files += 1
        file_id = f"file-{self.settings.n_files}"
        self.files[file_id] = data
        name = fields["file"].get_filename() or "input.jsonl"
        return 200, _file_object(file_id, name, len(data), purpose)

    def _create(self, body: dict) -> tuple[int, dict]:
        data = self.files.get(body.get("input_file_id", ""))
        if data is None:
            return _invalid(f"no file {body.get('input_file_id')!r}")
        if body.get("completion_window") != "24h" or body.get("endpoint") != "/v1/chat/completions":
            return _invalid("completion_window must be '24h' and endpoint '/v1/chat/completions'")
        lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        ids = [line.get("custom_id") for line in lines]
        if len(lines) > MAX_LINES or len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
            return _invalid("at most 50,000 lines, each with a distinct custom_id")
        if any(line.get("method") != "POST" or line.get("url") != body["endpoint"] for line in lines):
            return _invalid("every line must POST to the batch's endpoint")
        self.settings.n_batches += 1
        now = int(time.time())
        obj = {
            "id": f"batch_{self.settings.n_batches}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "expires_at": now + 86400,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        batch = _Batch(obj, lines, time.time(), "expired" if self.settings.expire_half else "completed")
        self.settings.expire_half = False
        self.batches[obj["id"]] = batch
        self.settings.created.append(dict(obj))
        return 200, obj

    def _advance(self, batch: _Batch) -> dict:
        """The batch as its clock has moved it; its files are written when it ends."""
        if batch.settled:
            return batch.obj
        if batch.cancelled_at is not None:
            self._settle(batch, "cancelled")
            return batch.obj
        step = int((time.time() - batch.started) / max(self.settings.step_s, 1e-9))
        if step < len(STEPS):
            batch.obj["status"] = STEPS[step]
            done = len(batch.lines) * step // len(STEPS)
            batch.obj["request_counts"]["completed"] = done
            return batch.obj
        self._settle(batch, batch.ends_as)
        return batch.obj

    def _settle(self, batch: _Batch, status: str) -> None:
        finished = len(batch.lines) if status == "completed" else len(batch.lines) // 2
        out, errors = [], []
        for index, line in enumerate(batch.lines):
            custom_id = line["custom_id"]
            if index >= finished:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append(_error_line(custom_id, None, {"code": code, "message": f"request {code[6:]}"}))
            elif self._fails(custom_id):
                self.settings.n_line_failures += 1
                failure = {"error": {"message": "The server had an error", "type": "server_error"}}
                errors.append(_error_line(custom_id, {"status_code": 500, "request_id": "", "body": failure}, None))
            else:
                try:
                    answer = self.completion(line["body"])
                except (KeyError, IndexError, TypeError, AttributeError):
                    invalid = {"error": {"message": "invalid request body", "type": "invalid_request_error"}}
                    errors.append(_error_line(custom_id, {"status_code": 400, "request_id": "", "body": invalid}, None))
                    continue
                self.settings.n_lines += 1
                out.append(
                    _error_line(custom_id, {"status_code": 200, "request_id": f"req-{custom_id}", "body": answer}, None)
                )
        counts = {"total": len(batch.lines), "completed": len(out), "failed": len(errors)}
        batch.obj.update(status=status, request_counts=counts)
        batch.obj[f"{status}_at"] = int(time.time())
        batch.obj["output_file_id"] = self._store(out) if out else None
        batch.obj["error_file_id"] = self._store(errors) if errors else None
        batch.settled = True

    def _fails(self, custom_id: str) -> bool:
        share = self.settings.fail_share
        if not share or custom_id in self.failed_once:
            return False
        draw = int(hashlib.sha256(custom_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if draw < share:
            self.failed_once.add(custom_id)
            return True
        return False

    def _store(self, lines: list[dict]) -> str:
        self.settings.n_files += 1
        file_id = f"file-{self.settings.n_files}"
        self.files[file_id] = "".join(json.dumps(line) + "\n" for line in lines).encode()
        self.outputs.add(file_id)
        return file_id


def _hostile(kind: str, data: bytes, trickle_s: float) -> StreamedBody:
    if kind == "endless":
        return StreamedBody(itertools.repeat(data))
    if kind == "gzip_bomb":
        return StreamedBody(filter(None, gzip_bomb(2048)), encoding="gzip")
    if kind == "trickle":
        return StreamedBody((data[i : i + 1] for i in range(len(data))), pause_s=trickle_s)
    raise ValueError(f"no hostile output {kind!r}")


def _error_line(custom_id: str, response: dict | None, error: dict | None) -> dict:
    return {"id": f"batch_req_{custom_id[:16]}", "custom_id": custom_id, "response": response, "error": error}


def _file_object(file_id: str, name: str, size: int, purpose: str) -> dict:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": name,
        "purpose": purpose,
        "status": "processed",
    }


def _invalid(message: str) -> tuple[int, dict]:
    return 400, {"error": {"message": message, "type": "invalid_request_error"}}


def _not_found(kind: str, name: str) -> tuple[int, dict]:
    return 404, {"error": {"message": f"no {kind} {name!r}", "type": "invalid_request_error"}}
