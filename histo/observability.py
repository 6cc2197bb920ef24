"""Logs a collector can read: JSON lines, and one request id on every line of one request.

``configure_logging(level, fmt)`` is what each entry point (the search service, the page) calls
instead of ``logging.basicConfig``; the workers hand ``JsonFormatter`` to Celery's own handlers.
With ``fmt="json"`` (``HISTO_LOG__FORMAT=json``) every line is one object: ``time``, ``level``,
``logger``, ``message``, ``request_id`` while a request is being handled, and ``exception`` with
the traceback when there is one.

The request id lives in a context variable, set by the runtime for the length of one gRPC call,
HTTP request or Celery task (``request_scope``); it is the caller's ``x-request-id`` when that is
a sane token, else a fresh one, and the runtime echoes it back. A context variable, not a thread
local: asyncio tasks and the threads that Starlette's ``run_in_threadpool`` runs get a copy.
Lines logged on other threads (the embedding worker of ``histo.embed_batcher``) carry none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

#: The header (HTTP) and metadata key (gRPC, lower case there) that carries the id both ways.
REQUEST_ID_KEY = "x-request-id"
#: What a caller's id may look like; anything else (too long, spaces, control characters that could
#: forge log lines) is replaced by a fresh id.
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("histo_request_id", default=None)


def request_id_of(given: str | bytes | None) -> str:
    """The caller's id when it is a sane token, else a new one (32 hex digits)."""
    if isinstance(given, bytes):
        given = given.decode("ascii", errors="replace")
    if given and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


@contextlib.contextmanager
def request_scope(request_id: str) -> Iterator[str]:
    """Every line logged in this context meanwhile carries ``request_id``."""
    token = REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        REQUEST_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a field, its newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``HISTO_LOG__FORMAT``: ``json`` or ``text``."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {fmt!r}: use text or json (HISTO_LOG__FORMAT)")


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """The root logger at ``level``, writing to stderr in ``fmt``; with json, warnings are log
    records too, so that no plain line slips into the stream."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(fmt == "json")


__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_KEY",
    "JsonFormatter",
    "configure_logging",
    "formatter",
    "request_id_of",
    "request_scope",
]
