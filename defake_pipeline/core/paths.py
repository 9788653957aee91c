"""Where the pipeline reads its inputs and writes its outputs."""

from __future__ import annotations

import os
import re
from pathlib import Path

# The repository checkout this package lives in; its prompts/, decorators/ and datasets/
# folders are the fallback when the working directory has none of its own.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

_SLUG_RE = re.compile(r"[^a-z0-9_.-]+")


def defake_home() -> Path:
    """The folder for everything the pipeline writes (``DEFAKE_HOME``, default ``./outputs``)."""
    return Path(os.environ.get("DEFAKE_HOME") or "outputs").absolute()


def project_dirs(name: str) -> list[Path]:
    """Candidate folders called ``name``: the working directory's first, then the project's own."""
    dirs = [Path.cwd() / name, PACKAGE_ROOT / name]
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


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
    """A partition-safe key: lower case, no ``|`` or ``,``, never empty."""
    slug = _SLUG_RE.sub("-", text.strip().lower()).strip("-.")
    return slug or "unnamed"


class HomeLayout:
    """The files under DEFAKE_HOME, named in one place."""

    def __init__(self, home: Path | str | None = None):
        self.home = Path(home).absolute() if home else defake_home()

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
