"""The files under DEFAKE_HOME, named in one place."""

from __future__ import annotations

from pathlib import Path

from defake_pipeline.settings import defake_home, load_settings


class HomeLayout:
    """Every file the pipeline writes under DEFAKE_HOME."""

    def __init__(self, home: Path | str | None = None, journal_url: str | None = None):
        self.home = Path(home).absolute() if home else defake_home()
        # Where answers are journaled: DEFAKE_JOURNAL_URL (Postgres, for workers that share no
        # disk), else SQLite at ``journal``.
        self.journal_url = journal_url or load_settings().journal_url

    @property
    def journal(self) -> Path:
        return self.home / "cache" / "responses.sqlite"

    @property
    def manifests_dir(self) -> Path:
        return self.home / "manifests"

    def manifest_file(self, dataset: str) -> Path:
        return self.manifests_dir / f"{dataset}.parquet"

    @property
    def predictions_dir(self) -> Path:
        return self.home / "predictions"

    def predictions_file(self, model: str, prompt: str) -> Path:
        return self.predictions_dir / f"model={model}" / f"prompt={prompt}.parquet"

    @property
    def warehouse(self) -> Path:
        return self.home / "defake.duckdb"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def report_file(self, model: str, prompt: str) -> Path:
        return self.reports_dir / f"{model}__{prompt}.md"

    @property
    def leaderboard_file(self) -> Path:
        return self.reports_dir / "leaderboard.md"
