"""Error types whose messages are meant to be shown to a user as one line."""


class DefakeError(Exception):
    """Base class: the message names the file (or object) and the cause, on one line."""


class PromptError(DefakeError):
    """A prompt file is invalid, or cannot be rendered."""


class DatasetError(DefakeError):
    """A dataset definition or folder is invalid."""


class ModelConfigError(DefakeError):
    """A model name or model configuration is invalid."""


class FatalEndpointError(DefakeError):
    """The endpoint refuses every request (for example a wrong API key); retrying cannot help."""
