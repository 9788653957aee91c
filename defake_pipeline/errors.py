"""Error types whose messages are meant to be shown to a user as one line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def validation_line(exc: ValidationError) -> str:
    """A pydantic validation error as one line: where (``conversations.0.payload``), what, and
    how many more errors there are."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}{more}"


class DefakeError(Exception):
    """Base class: the message names the file (or object) and the cause, on one line."""


class SettingsError(DefakeError):
    """An environment variable the product reads holds a value it cannot use."""


class PromptError(DefakeError):
    """A prompt file is invalid, or cannot be rendered."""


class DatasetError(DefakeError):
    """A dataset definition or folder is invalid."""


class ModelConfigError(DefakeError):
    """A model name or model configuration is invalid."""


class FatalEndpointError(DefakeError):
    """The endpoint refuses every request (for example a wrong API key); retrying cannot help."""


class UnreachableEndpointError(FatalEndpointError):
    """Nothing answers at the model's endpoint (nothing listens there, or the name does not resolve)."""


class NotMaterialized(DefakeError, FileNotFoundError):
    """What a command reads (the warehouse, the image manifests) has not been materialized yet."""


class UnwritableTarget(DefakeError):
    """A file cannot be written where it was asked for: its folder takes no file, or a device
    or a socket is there, which is never replaced."""


class JournalWriteError(DefakeError):
    """An answer could not be stored (a full disk): sending more would pay for answers lost."""


class JournalDamagedError(DefakeError):
    """The response journal is not a readable SQLite database; it is never written over."""


class CostCapError(DefakeError):
    """What a run may cost is over its --max-cost: nothing was sent."""


class RunInterrupted(DefakeError):
    """SIGTERM or SIGINT stopped the run; what was journaled is kept."""

    def __init__(self, signum: int, detail: str = ""):
        import signal

        self.exit_code = 128 + signum  # the shell's convention for a death by signal
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name}{detail}; every answer received is in the journal, and a rerun resumes from it"
        )
