"""Domain errors. Each message says what is wrong and how to fix it, in one line.

The CLI prints them as one red line (exit 1); the gRPC service maps them to status codes in one
table (``services/search/errors.py``).
"""

import difflib
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


class NoMatchError(NotFoundError):
    """A search filter names a data set, label or split the index does not hold, or the encoder
    has no vectors under it; the message says which part and lists what there is."""


class StaleVectorsError(HistoError):
    """An encoder's vectors in the index were made by another artifact than the one loaded now:
    comparing a query's vector with them would rank by chance (``histo.provenance``)."""


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


def near_miss(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` was most likely meant as: the same but for case, else the closest
    spelling (difflib, cutoff 0.75); None when nothing is close."""
    choices = list(known)
    for choice in choices:
        if choice.lower() == str(name).lower():
            return choice
    close = difflib.get_close_matches(str(name).lower(), [c.lower() for c in choices], n=1, cutoff=0.75)
    return next((c for c in choices if close and c.lower() == close[0]), None)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """The text ``(did you mean 'X'?)`` for a near miss (with a leading space), else nothing."""
    guess = near_miss(name, known)
    return f" (did you mean {guess!r}?)" if guess is not None and guess != name else ""


def unknown_name(kind: str, name: str, known: list[str]) -> UnknownNameError:
    """Build the standard 'unknown X' error that lists the valid choices (a near miss first)."""
    choices = ", ".join(sorted(known)) or "(none)"
    return UnknownNameError(f"unknown {kind} {name!r}{did_you_mean(name, known)}; choose one of: {choices}")
