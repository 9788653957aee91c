"""Where files live: a local folder, or an object store (``s3://bucket/prefix``).

Paths on a store are ``universal_pathlib`` paths (Dagster's own choice), which read and write
through fsspec (s3fs, in the ``scale`` extra); local ones are plain ``pathlib`` paths. A write to
a store is one PUT of a finished object: there is no rename and no append.
"""

from __future__ import annotations

import functools
import os
import stat
import urllib.parse
from pathlib import Path
from typing import TypeGuard

from upath import UPath

from defake_pipeline.errors import DefakeError
from defake_pipeline.settings import is_url
from defake_pipeline.text import one_line, shown_url

# A file under DEFAKE_HOME (or a dataset root): a local path, or a path on an object store.
StoredPath = Path | UPath


def stored_path(location: str | Path) -> StoredPath:
    """A local path (made absolute) or an object store URL, as a path."""
    text = str(location)
    if not is_url(text):
        return Path(text).absolute()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "s3":  # the one kind of store built and tested
        raise DefakeError(f"{shown_url(text)}: neither a folder nor an s3:// URL (see docs/scaling.md)")
    if "@" in parts.netloc:  # s3fs would ask for "key:secret@bucket" as a bucket, and errors would show it
        raise DefakeError(
            f"{shown_url(text)}: keys inside an s3:// URL are not used; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (see docs/scaling.md)"
        )
    try:
        return UPath(text)
    except ImportError:  # s3fs, for s3://
        raise DefakeError(
            f"{shown_url(text)}: object storage needs the scale extra (pip install 'defake-pipeline[scale]')"
        ) from None


@functools.cache
def check_store(url: str) -> None:
    """Look once, per process, that the bucket of a home on object storage is there: an
    unreachable store or a misspelt bucket is then one line before anything is read or written,
    not an SDK traceback from the middle of a run."""
    bucket = urllib.parse.urlsplit(url).netloc
    try:
        UPath(url).fs.info(bucket)  # one HEAD of the bucket (``exists`` would hide why it failed)
    except FileNotFoundError:
        raise DefakeError(f"{shown_url(url)}: the object store has no bucket {bucket!r}") from None
    except Exception as exc:  # noqa: BLE001 - botocore's and s3fs's errors vary; any means no store
        raise DefakeError(f"{shown_url(url)}: cannot reach bucket {bucket!r} ({one_line(str(exc))})") from None


def sorted_glob(folder: StoredPath, pattern: str, recursive: bool = False) -> list[StoredPath]:
    """The files under ``folder`` matching ``pattern``, in name order (``recursive``: at any depth)."""
    found: list[StoredPath] = list(folder.rglob(pattern) if recursive else folder.glob(pattern))
    return sorted(found, key=str)


def relative_parts(path: StoredPath, folder: StoredPath) -> tuple[str, ...]:
    """``path``'s parts below ``folder`` (on one disk or one store); ValueError if it is not below."""
    base = str(folder).rstrip("/") + "/"
    if not str(path).startswith(base):
        raise ValueError(f"{path} is not below {folder}")
    return tuple(str(path)[len(base) :].split("/"))


def is_remote(path: StoredPath) -> TypeGuard[UPath]:
    """Whether a path lives on an object store (writes are PUTs: no rename, no append)."""
    return not isinstance(path, Path)


def size_and_mtime(path: StoredPath) -> tuple[int, int] | None:
    """A file's size and modification time (ns), which say whether it changed since last seen;
    None for a path that cannot be looked at."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class RefusedFile(Exception):
    """A file refused unread: not a regular file, or over its size limit; its text says which."""


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words (``st_mode``)."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _not_regular(mode: int) -> RefusedFile:
    return RefusedFile(f"not a regular file ({file_kind(mode)}); only regular files are read")


def refuse_special_file(path: StoredPath) -> None:
    """RefusedFile where a local ``path`` is there but is not a regular file (a named pipe, a
    device, a folder, or a symlink to one): opened, a pipe blocks for good and ``/dev/zero``
    never ends. An absent path passes: it is for the caller to create."""
    if is_remote(path):
        return
    try:
        mode = os.stat(str(path)).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise _not_regular(mode)


def read_regular_file(path: str | os.PathLike[str], max_bytes: int, limit: str) -> bytes:
    """A local file's bytes. Only a regular file is read (a named pipe would block its reader,
    and ``/dev/zero`` never ends), and never more than ``max_bytes`` (``limit`` names that limit);
    else RefusedFile. The file is opened without blocking, so a pipe swapped in after any
    earlier check cannot block the read."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(mode)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RefusedFile(f"over the {limit}")
    return data


# A dataset definition, a prompt or models.toml takes a few kilobytes.
MAX_PROJECT_FILE_BYTES = 1 << 20


def read_project_file(path: Path, error: type[DefakeError]) -> str:
    """The text of a project file (a dataset definition, a prompt, ``models.toml``). One that
    cannot be read (missing, unreadable, a pipe, a device, over 1 MB) is ``error`` naming it and
    why; text that is not UTF-8 is UnicodeDecodeError, for the caller to word with its format's."""
    try:
        return read_regular_file(path, MAX_PROJECT_FILE_BYTES, "1 MB limit for a project file").decode("utf-8")
    except RefusedFile as exc:
        raise error(f"{path}: {exc}") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
