"""Reading a chat completion off the wire: strict about its shape, lenient about its encoding.

An answer that arrives is paid for, so it is kept whatever its bytes: invalid UTF-8 and lone
surrogates (``"\\ud800"`` escapes, which SQLite cannot store) become U+FFFD and the entry is
flagged ``repaired_encoding``. A body that is not JSON at all (a proxy's HTML error page) is
a transient failure, retried like a malformed one.
"""

from __future__ import annotations

import json
import re

from openai.types.chat import ChatCompletion

from defake_pipeline.endpoints.retry import EmptyResponseError, NonJSONBodyError

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> tuple[str, bool]:
    """``text`` with lone surrogates replaced by U+FFFD, and whether any were."""
    repaired, n = _LONE_SURROGATE.subn("\ufffd", text)
    return repaired, n > 0


def parse_completion(content_type: str | None, body: bytes) -> tuple[ChatCompletion, bool]:
    """The completion in ``body`` and whether its text had to be repaired to be stored."""
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
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise EmptyResponseError("the endpoint returned no message content")
    message["content"], fixed = repair_text(message["content"])
    # construct() builds the SDK's models without validating them, as the SDK itself does.
    return ChatCompletion.construct(**data), repaired or fixed
