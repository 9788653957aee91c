"""Structured outputs as the test server checks and honours them, written from the APIs'
published rules (not from the client's code).

- OpenAI: ``response_format`` is ``{"type": "text" | "json_object" | "json_schema"}``; a
  ``json_schema`` one names its schema (``^[a-zA-Z0-9_-]{1,64}$``) and, when ``strict``, every
  object in it lists all its properties as ``required`` and sets ``additionalProperties: false``.
  A schema that breaks these is a 400 with ``param: response_format``.
- vLLM: ``structured_outputs: {"choice": [...]}`` makes the answer one of the choices.
"""

from __future__ import annotations

import json
import re

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_VERDICT = re.compile(r"\b(real|natural|fake|generated)\b", re.I)


def _strict_problem(schema: object, where: str = "schema") -> str | None:
    if not isinstance(schema, dict):
        return f"{where} must be an object"
    if schema.get("type") == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return f"{where}: an object needs 'properties'"
        if schema.get("additionalProperties") is not False:
            return f"{where}: 'additionalProperties' is required to be supplied and to be false"
        if sorted(schema.get("required") or []) != sorted(properties):
            return (
                f"{where}: 'required' is required to be supplied and to be an array including every key in properties"
            )
        for name, inner in properties.items():
            if problem := _strict_problem(inner, f"{where}.{name}"):
                return problem
    return None


def structured_problem(body: dict, refuse: bool = False) -> dict | None:
    """The error of a 400 for the request's structured-output fields (invalid, or ``refuse``d as
    by a server that supports none), or None."""
    for name in ("response_format", "structured_outputs") if refuse else ():
        if name in body:
            return _error(f"'{name}' is not supported with this model.", name)
    problem = _invalid(body)
    return _error(problem, "response_format") if problem else None


def _error(message: str, param: str) -> dict:
    return {"message": message, "type": "invalid_request_error", "param": param}


def _invalid(body: dict) -> str | None:
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or response_format.get("type") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            return "Invalid value for 'response_format.type': expected 'text', 'json_object' or 'json_schema'."
        if response_format["type"] == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not _NAME.match(str(spec.get("name", ""))):
                return "Invalid 'response_format.json_schema': a name of letters, digits, _ or - is required."
            if spec.get("strict") and (problem := _strict_problem(spec.get("schema"))):
                return f"Invalid schema for response_format '{spec['name']}': {problem}."
    structured = body.get("structured_outputs")
    if structured is not None:
        choice = structured.get("choice") if isinstance(structured, dict) else None
        if not isinstance(choice, list) or not choice or not all(isinstance(c, str) for c in choice):
            return "structured_outputs.choice must be a non-empty list of strings"
    return None


def _word(text: str) -> str:
    found = _VERDICT.findall(text)
    last = found[-1].lower() if found else "real"
    return "generated" if last in ("fake", "generated") else "real"


def constrained_text(body: dict, text: str) -> str:
    """``text`` (the server's free answer) in the form the request constrains it to."""
    structured = body.get("structured_outputs")
    if isinstance(structured, dict) and structured.get("choice"):
        choices = structured["choice"]
        word = _word(text)
        return next((c for c in choices if c.lower() == word), choices[0])
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"].get("schema") or {}
        properties = schema.get("properties") or {}
        answer: dict = {}
        for name, field in properties.items():
            enum = field.get("enum") if isinstance(field, dict) else None
            answer[name] = next((e for e in enum if e == _word(text)), enum[0]) if enum else text
        return json.dumps(answer)
    return text
