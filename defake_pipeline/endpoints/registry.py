"""Model presets and user model entries, resolved to one validated ``ModelSpec``.

The preset table is data (``presets.toml``); a project may add or override entries in a
``models.toml`` at its root, which also lists the models registered for the pipeline.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
import urllib.parse
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from defake_pipeline.endpoints.verdict_formats import VerdictFormat
from defake_pipeline.errors import ModelConfigError, validation_line
from defake_pipeline.imaging.encode import EncodingPolicy
from defake_pipeline.settings import project_dirs, project_root
from defake_pipeline.storage import read_project_file
from defake_pipeline.text import slugify, without_userinfo
from defake_pipeline.warehouse.files import atomic_path

PRESETS_FILE = Path(__file__).with_name("presets.toml")
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# The most requests a model may have in flight. Each is a task from the start: 1,024 answering
# in 1 s make 60,000 requests a minute, past any OpenAI tier's published rate limit.
MAX_CONCURRENCY = 1024


class ModelSpec(BaseModel):
    """Everything needed to query one model, or run one baseline."""

    # No infinity or NaN in any number: a NaN price is never over a spending cap, and an infinite
    # timeout lets a request hang.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    backend: Literal["openai", "self_hosted", "baseline"]
    model: str | None = None  # fixed model id; None asks /v1/models
    # For an id asked of /v1/models: a regular expression it must contain (case-insensitive) to
    # be this model, since its answers are published under this name. None takes any id.
    serves: str | None = None
    detector: str | None = None  # baseline detector name
    base_url: str | None = None  # explicit URL; otherwise from the environment
    fold_system_prompt: bool = False
    encoding: str = "original"
    # OpenAI's image detail ("high", "low", "auto"); sent with each image, so part of the cache key.
    # "low" means the provider keeps 512×512 at most, so that is all that is sent.
    detail: Literal["high", "low", "auto"] | None = None
    max_tokens: int = Field(default=1000, ge=1)
    # Tokens an image costs a model sent no ``detail``: one per ``image_patch_px`` square, after its
    # vision encoder (Qwen2-VL and InternVL: 28 px; LLaVA-OneVision and Llama 3.2 Vision: 14 px).
    image_patch_px: int = Field(default=28, ge=1)
    # Newer OpenAI models (gpt-5, o-series) reject max_tokens and take max_completion_tokens.
    token_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    temperature: float | None = Field(default=None, ge=0)
    concurrency: int = Field(default=16, ge=1, le=MAX_CONCURRENCY)  # AIMD adapts below it
    # Every wait has an end: an hour is past any one answer, even a long chain of thought on a slow
    # server (a batch's 24 hours are the Batch API's own window, not this).
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_retries: int = Field(default=5, ge=0)
    backoff_base_s: float = Field(default=0.5, gt=0, le=3600)  # first retry waits up to this, doubling after
    max_retry_wait_s: float = Field(default=60.0, gt=0, le=3600)  # cap on any wait, the server's Retry-After too
    # Longer answers are stored cut to this many characters (the verdict is read from the whole).
    max_response_chars: int = Field(default=20_000, ge=100)
    logprobs: bool = False  # ask for token log-probabilities and derive a score P(fake)
    top_logprobs: int = Field(default=5, ge=1, le=20)
    price_in: float = Field(default=0.0, ge=0)  # dollars per million tokens
    price_out: float = Field(default=0.0, ge=0)
    # Journal misses go through the endpoint's Batch API (``evaluation/batch.py``), where answers
    # cost ``batch_discount`` of the direct price (OpenAI: half) and arrive within 24 hours.
    # How the final turn's answer is constrained (endpoints/verdict_formats.py): "seed" (free
    # text, the seed's parser), "json_schema" (OpenAI structured outputs) or "choice" (vLLM's).
    verdict_format: VerdictFormat = "seed"
    # Drift canaries (evaluation/canary.py), run on the nightly schedule: None asks them of
    # hosted (OpenAI) models and not of self-hosted ones, which change only when their server does.
    canary: bool | None = None
    canary_share: float = Field(default=0.02, gt=0, le=1)
    canary_min: int = Field(default=20, ge=1)
    canary_agreement: float = Field(default=0.9, ge=0, le=1)  # the check fails under this agreement
    on_drift: Literal["keep", "reevaluate"] = "keep"  # "reevaluate": a drifted partition is asked anew
    batch: bool = False
    batch_discount: float = Field(default=1.0, gt=0, le=1)
    aliases: list[str] = Field(default_factory=list)
    note: str | None = None

    @field_validator("serves")
    @classmethod
    def _serves_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"serves = {pattern!r} is not a regular expression ({exc})") from None
        return pattern

    @field_validator("encoding")
    @classmethod
    def _encoding_parses(cls, encoding: str) -> str:
        EncodingPolicy.parse(encoding)  # its ValueError says what is allowed
        return encoding

    def serves_id(self, served_id: str) -> bool:
        """Whether a served model id is this model's (see ``serves``)."""
        return self.serves is None or re.search(self.serves, served_id, re.IGNORECASE) is not None

    @property
    def key(self) -> str:
        """The model's partition key."""
        return slugify(self.name)

    @property
    def encoding_policy(self) -> EncodingPolicy:
        if self.detail == "low":
            return EncodingPolicy(max_side=512)
        return EncodingPolicy.parse(self.encoding)

    def resolved_base_url(self) -> str | None:
        """Where requests go: ``base_url``, else the preset family's default (None: the OpenAI API).

        Credentials inside the URL (``http://user:pw@host/v1``) are dropped: they would be
        printed in every error line, and httpx would send them as Basic auth in place of the
        Bearer key. A query (``?key=…``) is refused: the SDK appends paths after it, and the
        endpoint's name in every line and journal key would show it. The key goes in OPENAI_API_KEY."""
        url = self.base_url or (None if self.backend == "openai" else DEFAULT_BASE_URL)
        if not url:
            return None
        parts = urllib.parse.urlsplit(without_userinfo(url))
        if parts.query or parts.fragment:
            raise ModelConfigError(
                f"model {self.name!r}: base URL {parts._replace(query='', fragment='').geturl()}?… holds a query, "
                "which is not a place for a key (it would be shown wherever the URL is); give the key as OPENAI_API_KEY"
            )
        return parts.geturl()

    def with_endpoint_urls(self, base_url: str | None, openai_base_url: str | None) -> ModelSpec:
        """This spec with the environment's URL (BASE_URL for self-hosted presets, OPENAI_BASE_URL
        for OpenAI ones) where the model entry names none."""
        url = openai_base_url if self.backend == "openai" else base_url
        if url and self.backend != "baseline" and not self.base_url:
            return self.model_copy(update={"base_url": url})
        return self

    @property
    def canary_on(self) -> bool:
        return self.backend != "baseline" and (self.canary if self.canary is not None else self.backend == "openai")

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        """The price of tokens, sent directly or (``batch``) through the Batch API."""
        direct = (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1_000_000
        return direct * self.batch_discount if batch else direct


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(read_project_file(path, ModelConfigError))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # tomllib recurses: a file nested thousands deep is invalid TOML here, not a crash.
        raise ModelConfigError(f"{path}: invalid TOML ({exc})") from None


def registry_files() -> list[Path]:
    """``models.toml`` files, the working directory's first."""
    # Any entry by that name, so that a pipe or a folder is an error naming it, not ignored.
    return [d / "models.toml" for d in project_dirs(".") if (d / "models.toml").exists()]


def _file_stamp(path: Path) -> tuple[Path, int, int]:
    stat = path.stat()
    return path, stat.st_mtime_ns, stat.st_size


@cache
def _model_table(stamps: tuple[tuple[Path, int, int], ...]) -> dict[str, ModelSpec]:
    files = [path for path, _, _ in stamps]
    raw: dict[str, dict] = {name: dict(entry) for name, entry in _read_toml(PRESETS_FILE).items()}
    origin = {name: PRESETS_FILE for name in raw}
    # Later files are the project's own; the working directory's models.toml wins, so read it last.
    for file in reversed(files):
        for name, entry in _read_toml(file).get("models", {}).items():
            base = raw.get(entry.get("preset", name), {})
            raw[name] = {**base, **{k: v for k, v in entry.items() if k != "preset"}}
            origin[name] = file
    table: dict[str, ModelSpec] = {}
    named: dict[str, str] = {}  # partition key -> the name that gave it
    for name, entry in raw.items():
        if (other := named.setdefault(slugify(name), name)) != name:
            raise ModelConfigError(
                f"{origin[other]}: model {other!r} and {origin[name]}: model {name!r} give one partition key "
                f"{slugify(name)!r}; rename one"
            )
        try:
            spec = ModelSpec(name=name, **entry)
        except ValidationError as exc:
            raise ModelConfigError(f"{origin[name]}: model {name!r}: {validation_line(exc)}") from None
        table[name] = spec
        for alias in spec.aliases:
            table.setdefault(alias, spec)
    return table


def model_table() -> dict[str, ModelSpec]:
    """All known models by name and alias.

    Cached by each file's modification time and size, so a long-running process (the
    Dagster code server) sees an edited ``models.toml`` on its next call, without a reload.
    """
    return _model_table(tuple(_file_stamp(f) for f in registry_files()))


def get_model(name: str) -> ModelSpec:
    """The spec for a model name or alias (case-insensitive), or a ModelConfigError listing the names."""
    table = model_table()
    spec = table.get(name) or table.get(name.lower())
    if spec is None:
        known = ", ".join(sorted(table))
        raise ModelConfigError(f"unknown model {name!r}; known models: {known}")
    return spec


def model_by_key(key: str) -> ModelSpec:
    """The spec whose partition key (slug of its name) is ``key``; names and aliases also work."""
    table = model_table()
    for spec in table.values():
        if spec.key == key:
            return spec
    return get_model(key)


def registered_model_keys() -> set[str]:
    """Partition keys of the registered models; none when models.toml cannot be read (so
    nothing is evaluated on its own until it is mended)."""
    try:
        return {get_model(name).key for name in registered_models()}
    except ModelConfigError:
        return set()


def registered_baselines() -> list[ModelSpec]:
    """The registered models that are baselines (they read no prompt)."""
    try:
        specs = [get_model(name) for name in registered_models()]
    except ModelConfigError:
        return []
    return [spec for spec in specs if spec.backend == "baseline"]


def registered_models() -> list[str]:
    """Models registered for the pipeline's partitions (``registered = [...]`` in models.toml);
    ``canny`` where no models.toml says (the demo's)."""
    names: list[str] = []
    said = False
    for file in registry_files():
        table = _read_toml(file)
        said = said or "registered" in table
        for name in table.get("registered", []):
            if name not in names:
                names.append(name)
    return names if said else ["canny"]


_REGISTERED_LINE = re.compile(r"^registered\s*=\s*\[[^\]]*\]", re.M)


def registry_file() -> Path:
    """The ``models.toml`` that registering writes: the project's, in its root (see
    ``project_root``); outside any project, the working directory's, which makes it one. Never
    the one shipped beside the package: it stands in for a project only to be read, and every
    folder without a project shares it."""
    return (project_root() or Path.cwd()) / "models.toml"


def write_registered(names: list[str]) -> Path:
    """Make ``names`` the ``registered`` list of ``registry_file()``; the rest of the file is kept."""
    file = registry_file()
    text = file.read_text(encoding="utf-8") if file.exists() else ""
    line = "registered = [" + ", ".join(json.dumps(n, ensure_ascii=False) for n in names) + "]"
    found = _REGISTERED_LINE.search(text)
    text = _REGISTERED_LINE.sub(lambda _: line, text, count=1) if found else f"{line}\n{text}"
    tomllib.loads(text)  # never leave a file that no longer parses
    # The user's own file: written whole or not at all (a full disk must not cut it short), as
    # the file a link names where it is one, with the mode it had.
    target = file.resolve()
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if target.exists():
            shutil.copymode(target, tmp)
    return file
