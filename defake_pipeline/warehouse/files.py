"""Atomic file writes, in one place: readers see the old file or the new one, never half of one.

On a local disk the finished file is renamed over the old one. On object storage there is no
rename: the finished file, written to a local scratch file first, is sent in one PUT, and the
store swaps the object whole.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from defake_pipeline.errors import UnwritableTarget
from defake_pipeline.storage import StoredPath, file_kind, is_remote

# The process's umask: reading it means setting it, so it is read once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temporary_beside(target: StoredPath, suffix: str = ".tmp") -> Path:
    """A new, empty temporary file to write ``target``'s content in: in its folder (so a rename
    over it is atomic), or the local temporary folder for an object on a store. Its name carries
    the writer's pid, so ``remove_abandoned`` can tell a dead writer's file."""
    folder = None
    if not is_remote(target):
        _refuse_special_target(Path(str(target)))
        folder = Path(str(target)).parent
        folder.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-{os.getpid()}-", suffix=suffix, dir=folder)
    except OSError as exc:
        # Named by the file asked for, not by a temporary name the user never gave.
        raise UnwritableTarget(f"cannot write {target}: {exc.strerror or exc}") from None
    # mkstemp makes the file 0600; renamed into place, it should be as readable as any file
    # written here (a report folder is served, or read by teammates), so the umask decides.
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    return Path(tmp)


def _refuse_special_target(target: Path) -> None:
    """Renamed over, a device (``-o /dev/null`` as root) would become a regular file for every
    program of the machine. A named pipe or a symlink in the target's place is replaced, as any
    file there is: the rename takes the name, not what a link points to."""
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        return
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise UnwritableTarget(f"cannot write {target}: it is {file_kind(mode)}, which is never replaced")


def publish(tmp: Path, target: StoredPath) -> None:
    """Put the finished ``tmp`` in ``target``'s place: one rename, or one upload (then the
    scratch file goes)."""
    if is_remote(target):
        try:
            target.fs.put_file(str(tmp), target.path)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, str(target))


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return True


def remove_abandoned(target: StoredPath, suffix: str) -> list[Path]:
    """Remove temporary files of ``target`` (``temporary_beside``) whose writer died before it
    could rename or remove them, as a killed rebuild leaves; returns what was removed. (An
    object store keeps no partial object: an upload either completes or leaves nothing.)"""
    if is_remote(target):
        return []
    target = Path(str(target))
    removed = []
    for tmp in target.parent.glob(f".{glob.escape(target.stem)}-*{suffix}*"):
        pid = tmp.name[len(target.stem) + 2 :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            remove_quietly(tmp)
            removed.append(tmp)
    return removed


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: StoredPath, suffix: str = ".tmp", create: bool = True) -> Iterator[Path]:
    """A temporary local path to write ``target`` at: published (``publish``) when the block
    succeeds, removed (with a ``.wal`` beside it) when it fails. ``create=False`` leaves the
    path free for a writer that insists on creating the file itself (DuckDB)."""
    tmp = temporary_beside(target, suffix)
    if not create:
        tmp.unlink()
    try:
        yield tmp
        publish(tmp, target)
    finally:
        remove_quietly(tmp, tmp.with_name(tmp.name + ".wal"))


def remove_tree(folder: StoredPath) -> None:
    """Remove a folder and everything under it (on a store: every object under its prefix)."""
    if is_remote(folder):
        if folder.exists():
            folder.fs.rm(folder.path, recursive=True)
    else:
        shutil.rmtree(str(folder), ignore_errors=True)


@contextmanager
def local_working_copy(target: StoredPath) -> Iterator[Path]:
    """A local file to read, append to and flush row by row in place of ``target``: the target
    itself on a local disk; on a store (which cannot append) a scratch copy, sent back in one
    PUT when the block ends, however it ends, if it holds anything."""
    if not is_remote(target):
        yield Path(str(target))
        return
    tmp = temporary_beside(target, ".part")
    try:
        if target.exists():
            target.fs.get_file(target.path, str(tmp))
        yield tmp
    finally:
        if tmp.stat().st_size:
            publish(tmp, target)
        remove_quietly(tmp)


def write_text_atomic(target: StoredPath, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
