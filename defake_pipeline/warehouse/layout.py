"""The files under DEFAKE_HOME, named in one place.

DEFAKE_HOME is a folder or an object store URL (``s3://bucket/prefix``). Paths under a folder
are ``pathlib`` paths; under a URL they are ``universal_pathlib`` paths (Dagster's own choice),
which read and write through fsspec (s3fs, in the ``scale`` extra), each write one PUT of the
finished object.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeGuard

from upath import UPath

from defake_pipeline.errors import DefakeError, JournalWriteError
from defake_pipeline.settings import defake_home, is_url, load_settings
from defake_pipeline.text import without_userinfo

# A file under DEFAKE_HOME (or a dataset root): a local path, or a path on an object store.
StoredPath = Path | UPath


def home_path(location: str | Path) -> StoredPath:
    """A folder (made absolute) or an object store URL, as a path under which files are named."""
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


def is_remote(path: StoredPath) -> TypeGuard[UPath]:
    """Whether a path lives on an object store (writes are PUTs: no rename, no append)."""
    return not isinstance(path, Path)


class HomeLayout:
    """Every file the pipeline writes under DEFAKE_HOME."""

    def __init__(self, home: Path | str | None = None, journal_url: str | None = None):
        self.home = home_path(home or defake_home())
        # Where answers are journaled: DEFAKE_JOURNAL_URL (Postgres, for workers that share no
        # disk), else SQLite at ``journal``.
        self.journal_url = journal_url or load_settings().journal_url

    @property
    def remote(self) -> bool:
        return is_remote(self.home)

    @property
    def journal(self) -> Path:
        if is_remote(self.home):
            # SQLite needs a local disk; a home on object storage is for workers that share none.
            raise JournalWriteError(
                f"DEFAKE_HOME is on object storage ({without_userinfo(str(self.home))}): set DEFAKE_JOURNAL_URL "
                "to a PostgreSQL database for the response journal (docs/scaling.md)"
            )
        return Path(str(self.home)) / "cache" / "responses.sqlite"

    @property
    def logs_dir(self) -> Path:
        """The CLI's log files: under a local home, else in the working directory."""
        return Path(str(self.home)) / "logs" if not self.remote else Path.cwd() / "defake-logs"

    @property
    def manifests_dir(self) -> StoredPath:
        return self.home / "manifests"

    def manifest_file(self, dataset: str) -> StoredPath:
        return self.manifests_dir / f"{dataset}.parquet"

    @property
    def predictions_dir(self) -> StoredPath:
        return self.home / "predictions"

    def predictions_file(self, model: str, prompt: str) -> StoredPath:
        return self.predictions_dir / f"model={model}" / f"prompt={prompt}.parquet"

    @property
    def warehouse(self) -> StoredPath:
        return self.home / "defake.duckdb"

    @property
    def reports_dir(self) -> StoredPath:
        return self.home / "reports"

    def report_file(self, model: str, prompt: str) -> StoredPath:
        return self.reports_dir / f"{model}__{prompt}.md"

    @property
    def leaderboard_file(self) -> StoredPath:
        return self.reports_dir / "leaderboard.md"
