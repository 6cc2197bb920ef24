"""One table from histo's errors to HTTP status codes, and the JSON every error answers with.

The rows follow the gRPC service's table (``services/search/errors.py``), class for class:
a client sees the same error class over both transports. The body is always
``{"error": {"status": 422, "class": "UnknownNameError", "message": "one line"}}``; anything
unexpected is a 500 whose message carries a reference to the server's log line, never a trace.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from histo.client import AuthenticationError, MessageTooLargeError, ServiceError, ServiceUnavailableError
from histo.errors import (
    HistoError,
    ImageTooLargeError,
    InvalidInputError,
    NotFoundError,
    StaleVectorsError,
    StoreUnavailableError,
    redact,
)

log = logging.getLogger("services.web")


class UnauthorisedError(HistoError):
    """The page's API wants a token (HISTO_WEB__TOKEN) and the request had none or a wrong one."""


#: Most specific first: the first row whose class the error is an instance of decides.
STATUS_TABLE: tuple[tuple[type[HistoError], int], ...] = (
    (ImageTooLargeError, 413),
    (MessageTooLargeError, 413),
    (InvalidInputError, 422),
    (NotFoundError, 404),
    (StaleVectorsError, 409),
    (StoreUnavailableError, 503),
    (ServiceUnavailableError, 503),
    (UnauthorisedError, 401),
    (AuthenticationError, 502),  # the search server refused *this server's* token: its operator's fix
    (ServiceError, 502),
)


@dataclass(frozen=True)
class HttpError:
    status: int
    error_class: str
    message: str

    def response(self) -> JSONResponse:
        body = {"error": {"status": self.status, "class": self.error_class, "message": self.message}}
        return JSONResponse(body, status_code=self.status)


def http_error_of(exc: BaseException, secrets: Iterable[str] = (), where: str = "") -> HttpError:
    """Look ``exc`` up in the table; anything else is a 500 and one log line with the traceback."""
    secrets = tuple(secrets)
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            message = redact(str(exc).splitlines()[0] if str(exc) else cls.__name__, secrets)
            return HttpError(status, type(exc).__name__, message)
    ref = uuid.uuid4().hex[:12]
    details = redact("".join(traceback.format_exception(exc)).rstrip(), secrets)
    log.error("internal error in %s (ref %s): %s", where or "a request", ref, details)
    return HttpError(500, "InternalError", f"internal error (ref {ref}); the server log has the details")


def describe_validation(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one line: ``top_k: Input should be a valid integer; …``."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


__all__ = ["STATUS_TABLE", "HttpError", "UnauthorisedError", "describe_validation", "http_error_of"]
