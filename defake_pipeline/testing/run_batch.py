"""What ``vllm run-batch -i IN -o OUT`` does with a batch file, for tests where no vLLM can run:
each input line's request is sent to a served model (the project's test server), and each
answer is written in vLLM's output format, ``{"id": "vllm-…", "custom_id", "response":
{"status_code", "request_id": "vllm-batch-…", "body"}, "error": null}``, one line per request.

Written from vLLM's documented file format; it shares no code with the pipeline.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def run_batch(input_file: Path, output_file: Path, base_url: str) -> int:
    """Answer every line of ``input_file`` through ``base_url``; returns the lines written."""
    written = 0
    with input_file.open(encoding="utf-8") as lines, output_file.open("w", encoding="utf-8") as out:
        for raw in lines:
            if not raw.strip():
                continue
            line = json.loads(raw)
            assert line["method"] == "POST" and line["url"] == "/v1/chat/completions", line
            request = urllib.request.Request(
                base_url.rstrip("/") + "/chat/completions",
                data=json.dumps(line["body"]).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, body = answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as failed:
                status, body = failed.code, json.loads(failed.read() or b"{}")
            response = {"status_code": status, "request_id": f"vllm-batch-{uuid.uuid4().hex}", "body": body}
            out.write(
                json.dumps(
                    {
                        "id": f"vllm-{uuid.uuid4().hex}",
                        "custom_id": line["custom_id"],
                        "response": response,
                        "error": None,
                    }
                )
                + "\n"
            )
            written += 1
    return written
