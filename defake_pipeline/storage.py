"""Where files live: a local folder, or an object store (``s3://bucket/prefix``).

Paths on a store are ``universal_pathlib`` paths (Dagster's own choice), which read and write
through fsspec (s3fs, in the ``scale`` extra); local ones are plain ``pathlib`` paths. A write to
a store is one PUT of a finished object: there is no rename and no append.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeGuard

from upath import UPath

from defake_pipeline.errors import DefakeError
from defake_pipeline.settings import is_url
from defake_pipeline.text import without_userinfo

# A file under DEFAKE_HOME (or a dataset root): a local path, or a path on an object store.
StoredPath = Path | UPath


def stored_path(location: str | Path) -> StoredPath:
    """A local path (made absolute) or an object store URL, as a path."""
    text = str(location)
    if not is_url(text):
        return Path(text).absolute()
    try:
        return UPath(text)
    except ImportError:  # s3fs, for s3://
        raise DefakeError(
            f"{without_userinfo(text)}: object storage needs the scale extra (pip install 'defake-pipeline[scale]')"
        ) from None


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
