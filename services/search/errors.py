"""The one table from histo's errors to gRPC status codes, and the abort that applies it.

=========================================  ===================  =========================================
what went wrong                            status               raised by
=========================================  ===================  =========================================
image over the pixel limit                 RESOURCE_EXHAUSTED   ``ImageTooLargeError`` (``load_rgb``)
unknown encoder (lists the known ones),    INVALID_ARGUMENT     ``InvalidInputError`` and subclasses:
bad filter, top_k, vector, no query,                            ``UnknownNameError``, ``ImageDecodeError``
empty or undecodable image
unknown point id, point lacks the vector,  NOT_FOUND            ``NotFoundError``, ``NoMatchError``
a filter value the index does not hold
vectors made by another artifact than the  FAILED_PRECONDITION  ``StaleVectorsError``
one loaded (re-ingest them)
store unreachable or locked                UNAVAILABLE          ``StoreUnavailableError`` and its
                                                                subclass ``StoreLockedError``
encoders still loading, or failed to load  UNAVAILABLE          ``NotReadyError`` (below)
anything else                              INTERNAL             any other exception: logged with its
                                                                traceback and a reference; the message
                                                                carries only the reference
request over the message limit             RESOURCE_EXHAUSTED   gRPC itself (``max_receive_message_length``)
no or wrong token                          UNAUTHENTICATED      the token interceptor (``server.py``)
a snapshot asked for by another machine    PERMISSION_DENIED    ``CreateSnapshot`` (``servicer.py``): only
when the server has no token                                    loopback clients, unless there is a token
=========================================  ===================  =========================================

Errors raised on purpose carry the trailing metadata ``histo-error: <class name>`` so that
``histo.client`` re-raises the same class. Messages pass through ``redact`` first: a configured
secret (the service token, the Qdrant API key) never leaves the process, not even in the log.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import grpc

from histo.client import ERROR_CLASS_KEY
from histo.errors import (
    HistoError,
    ImageTooLargeError,
    InvalidInputError,
    NotFoundError,
    StaleVectorsError,
    StoreUnavailableError,
    redact,
)

log = logging.getLogger("services.search")


class NotReadyError(HistoError):
    """The service is up but its encoders are not loaded (yet, or at all)."""


#: Most specific first: the first row whose class the error is an instance of decides.
STATUS_TABLE: tuple[tuple[type[HistoError], grpc.StatusCode], ...] = (
    (ImageTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (StaleVectorsError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
)


@dataclass(frozen=True)
class Status:
    """What a failed call answers: code, one-line message and, for histo errors, the class name."""

    code: grpc.StatusCode
    message: str
    error_class: str | None = None


def status_of(exc: BaseException, secrets: Iterable[str] = (), method: str = "") -> Status:
    """Look ``exc`` up in the table; anything else is INTERNAL and one log line with a traceback."""
    secrets = tuple(secrets)
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            return Status(code, redact(str(exc), secrets) or cls.__name__, type(exc).__name__)
    ref = uuid.uuid4().hex[:12]
    details = redact("".join(traceback.format_exception(exc)).rstrip(), secrets)
    log.error("internal error in %s (ref %s): %s", method or "a call", ref, details)
    return Status(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has the details")


def abort(
    context: grpc.ServicerContext, exc: BaseException, secrets: Iterable[str] = (), method: str = ""
) -> NoReturn:
    """End the call with the status the table gives ``exc`` (raises, as ``context.abort`` does)."""
    status = status_of(exc, secrets, method)
    if status.error_class is not None:
        context.set_trailing_metadata(((ERROR_CLASS_KEY, status.error_class),))
    context.abort(status.code, status.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - grpc always raises


__all__ = ["ERROR_CLASS_KEY", "STATUS_TABLE", "NotReadyError", "Status", "abort", "status_of"]
