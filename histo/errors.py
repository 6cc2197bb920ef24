"""Domain errors. Each message says what is wrong and how to fix it, in one line.

The CLI prints them as one red line (exit 1); the gRPC service maps them to status codes in one
table (``services/search/errors.py``).
"""

from collections.abc import Iterable


class HistoError(Exception):
    """Base of every error histo raises on purpose."""


class InvalidInputError(HistoError, ValueError):
    """The caller gave something histo cannot use (bad option, bad filter, bad value)."""


class DatasetLayoutError(InvalidInputError):
    """A folder does not look like the data set it was named as."""


class ImageDecodeError(InvalidInputError):
    """An image file or upload could not be decoded (empty, truncated, not an image)."""


class ImageTooLargeError(ImageDecodeError):
    """An image exceeds the decompression-bomb limit (``HISTO_IMAGES__MAX_PIXELS``)."""


class UnknownNameError(InvalidInputError):
    """A named thing (encoder, data set, method) is not registered; the message lists the known ones."""


class NotFoundError(HistoError, LookupError):
    """A referenced object (point id, artifact, file) does not exist."""


class SourceMissingError(NotFoundError):
    """A tile's source image is not where its data set was ingested from (moved or deleted)."""


class StoreUnavailableError(HistoError):
    """The vector store cannot be reached or opened right now."""


class StoreLockedError(StoreUnavailableError):
    """Another process owns the embedded store."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***`` (for messages and logs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def unknown_name(kind: str, name: str, known: list[str]) -> UnknownNameError:
    """Build the standard 'unknown X' error that lists the valid choices."""
    choices = ", ".join(sorted(known)) or "(none)"
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {choices}")
