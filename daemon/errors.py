"""The exceptions promptd raises, split by what the caller should do about them.

- ``ConfigError``: stop; the settings are wrong and a person must fix them.
- ``TransientError``: retry later; something outside us is down or busy.
- ``ImageError``: give up on this one image; record why and move on.
"""

from __future__ import annotations

from pathlib import Path


class PromptdError(Exception):
    """Base of every error promptd raises on purpose; carries the path it concerns."""

    kind = "error"

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


class ConfigError(PromptdError):
    """The configuration or a rule file is invalid; ``problems`` lists every finding."""

    kind = "config"

    def __init__(
        self, message: str, path: Path | str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, path)
        self.problems = problems or (str(self),)


class TransientError(PromptdError):
    """Something we depend on is unavailable right now (Ollama down, busy, disk full)."""

    kind = "transient"


class ModelMissingError(PromptdError):
    """A configured Ollama model is not pulled; retrying will not help until someone pulls it."""

    kind = "model_missing"


class OutputError(PromptdError):
    """A model answered, but with output we cannot use (truncated, invalid JSON, empty)."""

    kind = "bad_output"


class ImageError(PromptdError):
    """This file cannot be processed (empty, truncated, not an image, too large)."""

    kind = "image"


class QuarantinedError(ImageError):
    """promptd crashed or hung twice while this file was in hand; it waits until it changes."""

    kind = "quarantined"
