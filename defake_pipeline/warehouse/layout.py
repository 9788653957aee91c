"""The files under DEFAKE_HOME (a folder, or an object store URL: see ``storage``), named in one place."""

from __future__ import annotations

from pathlib import Path

from defake_pipeline.errors import JournalWriteError
from defake_pipeline.settings import defake_home, load_settings
from defake_pipeline.storage import StoredPath, check_store, is_remote, stored_path
from defake_pipeline.text import KEY_JOINER, shown_url


class HomeLayout:
    """Every file the pipeline writes under DEFAKE_HOME."""

    def __init__(self, home: Path | str | None = None, journal_url: str | None = None):
        self.home = stored_path(home or defake_home())
        if is_remote(self.home):
            check_store(str(self.home))
        # Where answers are journaled: DEFAKE_JOURNAL_URL (Postgres, for workers that share no
        # disk), else SQLite at ``journal``.
        self.journal_url = journal_url or load_settings().journal_url

    def make_first_folder(self) -> None:
        """Make a local home's manifests folder, the first a run writes: a home that cannot be
        a folder (a file in its place, a parent no one may write) is then one line before any
        run starts, not a failed run. A home on object storage has no folders to make."""
        if not self.remote:
            Path(str(self.manifests_dir)).mkdir(parents=True, exist_ok=True)

    @property
    def remote(self) -> bool:
        return is_remote(self.home)

    @property
    def journal(self) -> Path:
        if is_remote(self.home):
            # SQLite needs a local disk; a home on object storage is for workers that share none.
            raise JournalWriteError(
                f"DEFAKE_HOME is on object storage ({shown_url(str(self.home))}): set DEFAKE_JOURNAL_URL "
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
    def derived_images_dir(self) -> StoredPath:
        """Perturbed images of derived datasets, named by their source's content and the perturbation."""
        return self.home / "derived"

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
        return self.reports_dir / f"{model}{KEY_JOINER}{prompt}.md"

    @property
    def leaderboard_file(self) -> StoredPath:
        return self.reports_dir / "leaderboard.md"
