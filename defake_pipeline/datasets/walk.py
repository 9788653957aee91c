"""The one walk of a dataset's folders, shared by the manifest and the sensors' fingerprints, so
the two always see the same files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from upath import UPath

from defake_pipeline.imaging.probe import is_image_candidate
from defake_pipeline.storage import StoredPath, is_remote


@dataclass(frozen=True)
class FoundImage:
    """An image candidate below a folder, with the size and mtime a rescan compares (-1 for a
    file that cannot be stat'ed, such as a broken symlink: it stays listed, and its probe says why)."""

    path: StoredPath
    size: int
    mtime_ns: int


def walk_images(
    folder: StoredPath, notes: list[str] | None = None, crossing: Callable[[Path], str | None] | None = None
) -> Iterator[FoundImage]:
    """Every image candidate below ``folder``, hidden names skipped. Symlinked folders are
    followed (a generator's images often live on another disk); a folder reached a second
    time, as through a symlink loop, is not walked again, and ``notes`` says so.

    ``crossing`` is asked of every symlink and of all a symlink leads to: where it says one
    leads into a folder of the other label, it is skipped and ``notes`` says so. Followed, a
    link from real/ to the dataset's root would list every fake image as real too."""
    if is_remote(folder):
        yield from _walk_store(folder, notes)
        return
    walked: set[tuple[int, int]] = set()
    # Each folder with whether a symlink led to it: only what a link leads to can lie elsewhere.
    stack = [(Path(str(folder)), False)]
    while stack:
        current, linked = stack.pop()
        try:
            st = current.stat()
            if (st.st_dev, st.st_ino) in walked:
                if notes is not None:
                    notes.append(f"{current}: a folder already walked (a symlink loop or a second link to it); skipped")
                continue
            walked.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(current))
        except OSError as exc:
            if notes is not None:
                notes.append(f"{current}: cannot be listed ({exc.strerror or exc})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            path = Path(entry.path)
            through_link = linked or entry.is_symlink()
            if crossing is not None and through_link and (into := crossing(path)):
                if notes is not None:
                    notes.append(f"{path}: leads into {into}; skipped")
                continue
            if is_dir:
                stack.append((path, through_link))
            elif is_image_candidate(path):
                try:
                    found = entry.stat()
                except OSError:
                    yield FoundImage(path, -1, -1)
                    continue
                yield FoundImage(path, found.st_size, found.st_mtime_ns)


def _walk_store(folder: UPath, notes: list[str] | None) -> Iterator[FoundImage]:
    """The same walk on an object store: one listing of every object under the prefix, each
    with its size and modification time (a store has no symlinks)."""
    try:
        listing = folder.fs.find(folder.path, detail=True)
    except OSError as exc:
        if notes is not None:
            notes.append(f"{folder}: cannot be listed ({exc})")
        return
    prefix = folder.path.rstrip("/") + "/"
    for key, info in sorted(listing.items()):
        relative = key.removeprefix(prefix)
        if info.get("type") == "directory" or any(part.startswith(".") for part in relative.split("/")):
            continue
        path = folder.joinpath(*relative.split("/"))
        if is_image_candidate(path):
            modified = info.get("LastModified") or info.get("mtime")
            mtime_ns = int(modified.timestamp() * 1e9) if hasattr(modified, "timestamp") else -1
            yield FoundImage(path, int(info.get("size") or 0), mtime_ns)
