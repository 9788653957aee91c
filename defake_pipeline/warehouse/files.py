"""Atomic file writes, in one place: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_beside(target: Path, suffix: str = ".tmp") -> Path:
    """A new, empty temporary file in ``target``'s folder (so a rename over ``target`` is atomic).
    Its name carries the writer's pid, so ``remove_abandoned`` can tell a dead writer's file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-{os.getpid()}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(tmp)


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return True


def remove_abandoned(target: Path, suffix: str) -> list[Path]:
    """Remove temporary files of ``target`` (``temporary_beside``) whose writer died before it
    could rename or remove them, as a killed rebuild leaves; returns what was removed."""
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
def atomic_path(target: Path, suffix: str = ".tmp", create: bool = True) -> Iterator[Path]:
    """A temporary path to write ``target`` at: renamed over it when the block succeeds, removed
    (with a ``.wal`` beside it) when it fails. ``create=False`` leaves the path free for a
    writer that insists on creating the file itself (DuckDB)."""
    tmp = temporary_beside(target, suffix)
    if not create:
        tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        remove_quietly(tmp, tmp.with_name(tmp.name + ".wal"))
