"""Reading a chat completion off the wire: strict about its shape, lenient about its encoding.

An answer that arrives is paid for, so it is kept whatever its bytes: invalid UTF-8 and lone
surrogates (``"\\ud800"`` escapes, which SQLite cannot store) become U+FFFD and the entry is
flagged ``repaired_encoding``. A body that is not JSON at all (a proxy's HTML error page) is
a transient failure, retried like a malformed one.

The JSON is read as it is, not built into the SDK's ``ChatCompletion`` model: constructing
its nested objects was 9% of the client's CPU at 64 requests in flight, for four fields.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from defake_pipeline.endpoints.retry import EmptyResponseError, NonJSONBodyError

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> tuple[str, bool]:
    """``text`` with lone surrogates replaced by U+FFFD, and whether any were."""
    repaired, n = _LONE_SURROGATE.subn("\ufffd", text)
    return repaired, n > 0


@dataclass(frozen=True)
class Completion:
    """What the engine reads from a chat completion: the first choice's text, the usage, and
    that choice's ``logprobs.content`` as sent (a list of dicts), when there is one.

    A completion with no text is still an answer the endpoint billed: ``refusal`` holds the
    model's refusal when it declined, and ``text`` is empty when it said nothing at all
    (``content: null``, or no choices). Token counts are None where the usage is missing or
    is not a non-negative integer."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    logprobs: list | None = None
    repaired: bool = False  # invalid UTF-8 or lone surrogates were replaced by U+FFFD
    refusal: str | None = None
    served_model: str | None = None  # the completion's ``model``: the snapshot that answered
    fingerprint: str | None = None  # its ``system_fingerprint``, where the API sends one

    @property
    def usage_known(self) -> bool:
        return self.prompt_tokens is not None and self.completion_tokens is not None


def _count(usage: object, name: str) -> int | None:
    value = usage.get(name) if isinstance(usage, dict) else None
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if valid else None


def parse_completion(content_type: str | None, body: bytes) -> Completion:
    """The completion in ``body``, its text repaired where it could not be stored as sent."""
    try:
        text, repaired = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, repaired = body.decode("utf-8", errors="replace"), True
    kind = (content_type or "no content type").split(";")[0].strip() or "no content type"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if "json" not in kind:
            raise NonJSONBodyError(f"endpoint returned a non-JSON body ({kind})") from None
        raise
    if not isinstance(data, dict):
        raise NonJSONBodyError(f"endpoint returned JSON that is not a completion object ({kind})")
    choices = data.get("choices")
    usage = data.get("usage")
    # A completion object (a list of choices, or a usage) is an answer the endpoint billed,
    # even with no text in it: it is kept, never asked again. Anything else is a fault.
    if not isinstance(choices, list) and not isinstance(usage, dict):
        raise EmptyResponseError("the endpoint returned no completion (no choices and no usage)")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    refusal = message.get("refusal")
    text, fixed = repair_text(content) if isinstance(content, str) else ("", False)
    if isinstance(refusal, str) and refusal and not text:
        refusal, fixed = repair_text(refusal)
    else:
        refusal = None
    logprobs = first.get("logprobs") if isinstance(first, dict) else None
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    return Completion(
        text=text,
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        logprobs=tokens if isinstance(tokens, list) else None,
        repaired=repaired or fixed,
        refusal=refusal,
        served_model=_text(data.get("model")),
        fingerprint=_text(data.get("system_fingerprint")),
    )


def _text(value: object) -> str | None:
    """A short identifier as sent, or None where it is missing or not text."""
    return repair_text(value[:200])[0] if isinstance(value, str) and value else None
