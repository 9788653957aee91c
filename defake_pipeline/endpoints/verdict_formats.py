"""Constrained verdicts: a model entry's ``verdict_format`` as the request fields the APIs
document, and the verdict read back from the answer they constrain.

- ``seed`` (the default): no constraint; the seed's parser reads the free-text answer.
- ``json_schema``: OpenAI's structured outputs, ``response_format`` of type ``json_schema``,
  strict, an object whose ``verdict`` is one of the verdict words (after a ``reason``, where the
  prompt asks for one, so the model reasons before it answers).
- ``choice``: vLLM's structured outputs, ``structured_outputs: {"choice": [...]}`` in the body
  (current vLLM releases; the older ``guided_choice`` field was removed in vLLM 0.12).

Only the final turn, whose answer is the verdict, is constrained; the format is part of its
request and so of its cache key.
"""

from __future__ import annotations

import json
import re
from typing import Literal

VerdictFormat = Literal["seed", "json_schema", "choice"]
VERDICT_WORDS = ("real", "generated")
_VERDICT_OF_WORD = {"real": "real", "generated": "fake"}
# A final turn that asks for an explanation gets a reason field before the verdict.
_ASKS_FOR_REASONS = re.compile(r"\b(reason|reasons|reasoning|explain|explanation|why|justify)\b", re.I)
# Words a 400 carries when the endpoint refuses the constraint itself, not the image or the text.
_FORMAT_WORDS = ("response_format", "json_schema", "structured_outputs", "schema", "guided", "choice")


def verdict_params(verdict_format: VerdictFormat, with_reason: bool = False) -> dict:
    """The request fields that constrain the final turn's answer."""
    if verdict_format == "json_schema":
        properties: dict = {"reason": {"type": "string"}} if with_reason else {}
        properties["verdict"] = {"type": "string", "enum": list(VERDICT_WORDS)}
        schema = {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "strict": True, "schema": schema},
            }
        }
    if verdict_format == "choice":
        return {"structured_outputs": {"choice": list(VERDICT_WORDS)}}
    return {}


def asks_for_reasons(texts: list[str]) -> bool:
    return any(_ASKS_FOR_REASONS.search(text) for text in texts)


def structured_verdict(verdict_format: VerdictFormat, text: str) -> str | None:
    """``real`` or ``fake`` from a constrained answer; None where it is not one (the seed's
    parser then reads the text)."""
    word: object = None
    if verdict_format == "json_schema":
        try:
            answer = json.loads(text)
        except ValueError:
            return None
        word = answer.get("verdict") if isinstance(answer, dict) else None
    elif verdict_format == "choice":
        word = text.strip().lower()
    return _VERDICT_OF_WORD.get(word) if isinstance(word, str) else None


def refuses_the_format(message: str) -> bool:
    """Whether an endpoint's 400 refuses the constraint (so it would refuse every request)."""
    lowered = message.lower()
    return any(word in lowered for word in _FORMAT_WORDS)
