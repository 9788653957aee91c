"""The environment, read in this one module, and where the project's own files are found.

Everything else takes explicit values: the CLI and the Dagster resources read ``Settings``
and pass what they read on. Secrets are never stored in run config or printed.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from defake_pipeline.errors import SettingsError, validation_line

# The repository checkout this package lives in; its prompts/, decorators/ and datasets/
# folders are the fallback when the working directory has none of its own.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseModel):
    """Environment variables the product reads (names as written, case-sensitive)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    DEFAKE_HOME: str = "outputs"
    """Everything the pipeline writes: manifests, predictions, the journal, the warehouse, reports
    (default: ``outputs/`` in the project's root, see ``project_root``); a folder, or an object
    store URL such as ``s3://bucket/prefix`` (the standard AWS variables give its credentials and,
    with ``AWS_ENDPOINT_URL``, an S3-compatible server)."""
    DAGSTER_HOME: Path = Path(".dagster_home")
    """The Dagster instance the CLI runs on (default: ``.dagster_home/`` in the project's root)."""
    OPENAI_API_KEY: SecretStr | None = None
    """The Bearer key for OpenAI presets (and any endpoint that asks for one)."""
    BASE_URL: str | None = None
    """Self-hosted presets' endpoint (vLLM); default http://127.0.0.1:8000/v1."""
    OPENAI_BASE_URL: str | None = None
    """OpenAI presets' endpoint; default the OpenAI API."""
    DEFAKE_JOURNAL_URL: SecretStr | None = None
    """Where answers are journaled: ``postgresql://user:password@host:port/db`` for workers that
    share no disk, or ``sqlite:///path``; default SQLite at ``DEFAKE_HOME/cache/responses.sqlite``."""
    DEFAKE_PARTITIONS_PER_RUN: int | None = Field(default=None, ge=1)
    """How many ``predictions`` partitions one run of a backfill takes: unset, all of them (one
    process on one machine); 1 where runs go to workers (deploy/), so they spread over them."""
    DEFAKE_PROJECT: str | None = None
    """The project's folder (``models.toml``, ``prompts/``, ``datasets/``) when the working
    directory is not in it, as for a worker started in an empty folder."""
    DEFAKE_NIGHTLY_CRON: str = "0 3 * * *"
    """When the nightly reevaluation rescans every dataset."""
    DEFAKE_BATCH_POLL_S: int = Field(default=30, ge=1)
    """How often open batches are looked at (``batches_sensor``, ``mllmdf infer --batch --wait``):
    a batch takes minutes to hours, and each look is one request per open batch."""
    DEFAKE_SENSOR_INTERVAL_S: int = Field(default=5, ge=1)
    """The least time between two evaluations of each sensor. The daemon visits its sensors
    every 5 s at most, so an interval of up to 4 s has each sensor looked at on every visit;
    5 s, on about every second visit."""

    @field_validator("DAGSTER_HOME", mode="before")
    @classmethod
    def _a_folder(cls, value: object) -> object:
        # The instance's folder: its dagster.yaml says where its storage is (Postgres, for
        # a deployment), so it is never a URL, though DEFAKE_HOME may be one.
        if isinstance(value, str) and is_url(value):
            raise ValueError("is a URL; it must be a folder, whose dagster.yaml names the storage (docs/scaling.md)")
        return value

    @field_validator("OPENAI_API_KEY", mode="before")
    @classmethod
    def _key_as_one_token(cls, value: object) -> object:
        # A key read from a file keeps its line ending ("\r\n" from a .env saved on Windows),
        # which no HTTP header may hold: around the key it is no part of it; inside, it is refused.
        if isinstance(value, str):
            value = value.strip()
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ValueError("holds a control character (a line break?); a key has none")
        return value

    @property
    def api_key(self) -> str | None:
        return self.OPENAI_API_KEY.get_secret_value() if self.OPENAI_API_KEY else None

    @property
    def journal_url(self) -> str | None:
        return self.DEFAKE_JOURNAL_URL.get_secret_value() if self.DEFAKE_JOURNAL_URL else None


# What makes a folder a project's root: any of these in it.
PROJECT_MARKERS = ("models.toml", "datasets", "prompts")


def project_root(start: Path | None = None) -> Path | None:
    """The project the working directory is in: the nearest folder, from here up, that holds
    ``models.toml``, ``datasets/`` or ``prompts/`` (as git finds its repository); None outside any."""
    if start is None and (named := os.environ.get("DEFAKE_PROJECT")):
        return Path(named).absolute()
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return None


def load_settings() -> Settings:
    """The environment as it is now (read afresh: cheap, and tests change it), validated by
    pydantic. An empty variable counts as unset (DEFAKE_HOME= must not mean the current folder).
    Unset homes are the project root's ``outputs/`` and ``.dagster_home/``, wherever in the
    project a command runs; outside any project, the working directory's."""
    values = {name: value for name in Settings.model_fields if (value := os.environ.get(name))}
    base = project_root() or Path.cwd()
    for name in ("DEFAKE_HOME", "DAGSTER_HOME"):
        values.setdefault(name, str(base / Settings.model_fields[name].default))
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:  # the line names the variable, never its value
        raise SettingsError(f"environment variable {validation_line(exc)}") from None


def proxy_is_set() -> bool:
    """Whether HTTP_PROXY or HTTPS_PROXY (either case) is set: the SDK sends requests through it."""
    import urllib.request  # only asked when an endpoint cannot be reached

    return bool({"http", "https"} & set(urllib.request.getproxies()))


def is_url(location: str) -> bool:
    """Whether a location (DEFAKE_HOME, a dataset root) names an object store, not a folder."""
    return "://" in location


def homes_notice() -> str | None:
    """What a command run outside any project would create, and where, when DEFAKE_HOME is not
    set (None inside a project, or with DEFAKE_HOME set)."""
    if os.environ.get("DEFAKE_HOME") or project_root() is not None:
        return None
    settings = load_settings()
    if Path(settings.DEFAKE_HOME).exists():
        return None
    return (
        f"no project here (no {', '.join(PROJECT_MARKERS)} in {Path.cwd()} or above): writing to "
        f"{settings.DEFAKE_HOME} (set DEFAKE_HOME to choose)"
    )


def defake_home() -> str:
    """Where everything the pipeline writes goes (``DEFAKE_HOME``, default ``./outputs``): an
    absolute folder, or an object store URL."""
    home = load_settings().DEFAKE_HOME
    return home if is_url(home) else str(Path(home).absolute())


def project_dirs(name: str, shipped: bool = False) -> list[Path]:
    """Folders called ``name`` that hold the project's own files: the project's (see
    ``project_root``). Outside any project, the working directory's and then those shipped
    beside the package (the demo's), which stand in for one. ``shipped`` adds those anyway,
    for what is looked up by name (a prompt or a decorator the project does not have): a
    project never inherits the shipped prompts, datasets or registered models, which would
    evaluate, and spend on, what it never asked for."""
    root = project_root()
    dirs = [(root or Path.cwd()) / name]
    if root is None or shipped:
        dirs.append(PACKAGE_ROOT / name)
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen
