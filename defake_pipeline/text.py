"""Text from outside (model answers, file names, dataset values) made safe to show.

A model answer may hold terminal escape sequences (ANSI colours, OSC hyperlinks and titles)
or markdown that loads remote content; a file name may hold HTML or table syntax. Each is
shown as text, never acted on.
"""

from __future__ import annotations

import hashlib
import html
import re
import urllib.parse
from collections.abc import Iterable, Sequence

# C0 controls but tab and newline, DEL, and C1 controls (0x9b is a one-byte CSI); and the
# invisible format characters that reorder or hide text: bidirectional embeddings, overrides
# and isolates (a name can read backwards), zero-width spaces and joiners, the BOM.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
# Markdown punctuation that can start a link, an image, emphasis, code or a table cell.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def visible_controls(text: str) -> str:
    """``text`` with control and invisible format characters shown as ``\\xNN`` or ``\\uNNNN``
    (a terminal acts on none of them, and a reader sees they are there)."""
    return _CONTROLS.sub(_escape, text)


def one_line(text: str) -> str:
    """``text`` as one line of a terminal: ``visible_controls``, and line breaks shown as
    ``\\n`` and ``\\r`` (a name or an endpoint's message cannot forge a line of its own)."""
    return visible_controls(text).replace("\r", "\\r").replace("\n", "\\n")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def markdown_cell(text: str) -> str:
    """Text shown literally inside one markdown table cell: controls made visible, HTML escaped,
    markdown punctuation backslash-escaped (no link, image or column can be injected), and
    line breaks as ``<br>``."""
    text = html.escape(visible_controls(text), quote=False)
    text = _MARKDOWN.sub(r"\\\1", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def markdown_table(header: list[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A markdown table whose every cell is shown literally (``markdown_cell``): a "|" in a
    partition key or a file name stays inside its cell. ``align`` has one letter a column,
    ``r`` for right-aligned (numbers), anything else left."""
    rule = ["---:" if align[i : i + 1] == "r" else "---" for i in range(len(header))]
    body = [[markdown_cell(str(value)) for value in row] for row in rows]
    lines = [[markdown_cell(name) for name in header], rule, *body]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


# "|" too: inside a table row it would end the cell, even within the angle brackets.
_LINK_ESCAPES = (("%", "%25"), ("\\", "%5C"), ("<", "%3C"), (">", "%3E"), ("\n", "%0A"), ("\r", "%0D"), ("|", "%7C"))


def markdown_link_target(target: str) -> str:
    """A link destination in angle brackets that survives spaces, parentheses, and any of
    ``<``, ``>``, ``\\``, ``|`` or a line break in a file name (percent-encoded)."""
    if target.startswith("data:"):
        return f"<{target}>"
    for char, code in _LINK_ESCAPES:
        target = target.replace(char, code)
    # Controls and invisible characters, percent-encoded: the path still resolves, and the raw
    # markdown cannot be reordered by a right-to-left override.
    return "<" + _CONTROLS.sub(lambda m: urllib.parse.quote(m.group()), target) + ">"


def markdown_code(text: str) -> str:
    """A one-line code span: backticks cannot close it early, a pipe cannot split its table
    cell, and control characters are shown."""
    text = visible_controls(text).replace("`", "'").replace("|", "\\|")
    return "`" + " ".join(text.splitlines()) + "`"


# Letters and digits of any script stay (\w is Unicode-aware); a run of anything else is one '-',
# a run of dots one '.' (Dagster refuses "..." in a partition key), and a run of underscores one
# '_', with none at either end: file names join keys with KEY_JOINER (<model>__<prompt>.md), and
# a key that held it, or met it with an '_' at its edge, could give two partitions one file.
_SLUG_RE = re.compile(r"[^\w.-]+")
_DOTS_RE = re.compile(r"\.{2,}")
_UNDERSCORES_RE = re.compile(r"_{2,}")
KEY_JOINER = "__"


def is_utf8(text: str) -> bool:
    """False for file names holding undecodable bytes (Python keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """A file name safe to store as UTF-8, undecodable bytes shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def slugify(text: str) -> str:
    """A partition key that keeps distinct names distinct: the name in lower case, with no
    ``|``, ``,``, space or ``__``; where that changes the name (case, spaces, punctuation), a short
    hash of the whole name follows, so ``My Model`` and ``my-model`` stay two keys. Never empty."""
    slug = _SLUG_RE.sub("-", text.strip().lower())
    slug = _UNDERSCORES_RE.sub("_", _DOTS_RE.sub(".", slug)).strip("-._")
    if slug and slug == text:
        return slug
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else f"name-{digest}"


def without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part (everything else unchanged)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# URL parameters that carry a secret: libpq takes a password as ``?password=`` as well as in ``user:password@``.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def shown_url(url: str) -> str:
    """``url`` as any output may show it: no ``user:password@``, and the value of each secret
    parameter (``?password=``) as ``***``."""
    if "://" not in url:  # a path, whose "?" is part of its name
        return url
    # Cut, not re-joined by urllib: that would turn postgresql:///db into postgresql:/db.
    base, mark, rest = without_userinfo(url).partition("?")
    query, hash_mark, fragment = rest.partition("#")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    shown = "&".join(f"{k}=***" if k.lower() in _SECRET_PARAMETERS else f"{k}={v}" for k, v in pairs)
    return f"{base}{mark}{shown}{hash_mark}{fragment}"


def _url_secrets(url: str) -> set[str]:
    """Each secret inside ``url``, in every form a message may quote it: as written, decoded, encoded."""
    parts = urllib.parse.urlsplit(url)
    secrets = {parts.password or ""}
    secrets |= {
        v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k.lower() in _SECRET_PARAMETERS
    }
    return {
        form
        for secret in secrets
        if secret
        for form in (secret, urllib.parse.unquote(secret), urllib.parse.quote(secret, safe=""))
    }


def without_secret(text: str, secret: str | None) -> str:
    """``text`` (an error message) with ``secret`` masked, where the server or driver that wrote
    the message echoed it back."""
    return text.replace(secret, "***") if secret else text


def without_password(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with the passwords of ``url`` masked, however
    the driver quoted them."""
    for form in sorted(_url_secrets(url), key=len, reverse=True):  # the longest first: one may hold another
        text = without_secret(text, form)
    return text
