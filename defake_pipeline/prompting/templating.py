"""Substitution of ``{name}`` placeholders from the per-image cache, and nothing else.

The seed used ``str.format(**cache)``, which also allows ``{x.attr}`` and ``{x[0]}``: a
prompt file could then read attributes of arbitrary objects. We accept only bare
identifiers, and ``{{``/``}}`` as literal braces, as ``str.format`` does.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """A template is malformed, uses more than ``{name}``, or names an unset variable."""


def template_fields(template: str) -> Iterator[str]:
    """Yield the variable names a template uses; raise TemplateError on anything but ``{name}``."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"malformed template ({exc})") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not _IDENTIFIER.match(field) or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise TemplateError(f"only {{name}} placeholders are allowed, found {shown}")
        yield field


def render(template: str, values: Mapping[str, object]) -> str:
    """Render a template, substituting each ``{name}`` with ``str(values[name])``."""
    out: list[str] = []
    for literal, field, spec, conversion in _FORMATTER.parse(template):
        out.append(literal)
        if field is None:
            continue
        if not _IDENTIFIER.match(field) or spec or conversion:
            list(template_fields(template))  # raises the precise error
        if field not in values:
            raise TemplateError(f"variable {{{field}}} is not set")
        out.append(str(values[field]))
    return "".join(out)


def sole_variable(template: str) -> str | None:
    """The variable name when ``template`` is exactly one ``{name}`` (spaces around allowed)."""
    try:
        parsed = list(_FORMATTER.parse(template.strip())) if "{" in template else []
    except ValueError:
        return None  # malformed: render() says why
    if len(parsed) == 1 and not parsed[0][0] and parsed[0][1] and _IDENTIFIER.match(parsed[0][1]):
        return parsed[0][1]
    return None
