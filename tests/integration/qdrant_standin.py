"""A loopback stand-in for a Qdrant server that keeps what it is sent: ``FakeQdrant``'s HTTP side
(``fake_qdrant.py``: a free loopback port, every request recorded, ``stop()`` refuses) answering
the REST calls ``ServerStore`` makes from qdrant-client's local mode, each body parsed into and
each answer made from qdrant-client's own request and response models.

No Qdrant server can be installed here; this puts the real REST path of ``ServerStore.connect``
(qdrant-client over HTTP) in front of a working store. ``pause_after_upserts(n)`` holds every
point upsert after the first ``n`` until ``release()``, so that a test can kill a client midway.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from tests.integration.fake_qdrant import FakeQdrant

_COLLECTION = re.compile(r"^/collections/(?P<name>[^/]+)(?P<rest>/.*)?$")


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


class StoredQdrant(FakeQdrant):
    """``with StoredQdrant() as server: ServerStore.connect(server.url)``; ``server.local`` is the
    qdrant-client local-mode client that holds the data (for assertions)."""

    def __init__(self, port: int = 0) -> None:
        super().__init__({}, port=port)
        self.local = QdrantClient(location=":memory:")
        self.upserts = 0
        self._pause_after: int | None = None
        self.paused = threading.Event()
        self._go = threading.Event()
        self._store_lock = threading.Lock()

    def pause_after_upserts(self, count: int) -> None:
        self._pause_after = count
        self._go.clear()

    def release(self) -> None:
        self._pause_after = None
        self._go.set()

    def stop(self) -> None:
        self.release()
        super().stop()

    def __enter__(self) -> StoredQdrant:
        self.start()
        return self

    # -- the REST API ----------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        if path == "/" and method == "GET":
            return super().answer(method, path, body)
        match = _COLLECTION.match(path)
        if match is None:
            return 404, {"status": {"error": f"stand-in has no {method} {path}"}}
        name, rest = match["name"], match["rest"] or ""
        handler = self._routes().get((method, re.sub(r"^/vectors/[^/]+$", "/vectors/*", rest)))
        if handler is None:
            return 404, {"status": {"error": f"stand-in has no {method} {path}"}}
        data = json.loads(body) if body else {}
        if (method, rest) == ("PUT", "/points"):
            self._maybe_pause()
        try:
            with self._store_lock:
                result = handler(name, data, rest)
        except Exception as exc:  # local mode's "not found" / bad request, or a gap in this stand-in
            status = 404 if "not found" in str(exc).lower() else 400
            return status, {"status": {"error": f"{type(exc).__name__}: {exc}"}}
        return 200, {"result": _json(result), "status": "ok", "time": 0.0}

    def _handler(self) -> Any:
        """``FakeQdrant``'s handler, answering DELETE as well (a dropped collection)."""
        base = super()._handler()

        class Handler(base):  # type: ignore[misc,valid-type]
            do_DELETE = base.do_GET  # type: ignore[attr-defined]

        return Handler

    def _maybe_pause(self) -> None:
        self.upserts += 1
        if self._pause_after is not None and self.upserts > self._pause_after:
            self.paused.set()
            self._go.wait(60)

    def _routes(self) -> dict[tuple[str, str], Callable[[str, dict[str, Any], str], Any]]:
        local = self.local
        return {
            ("GET", "/exists"): lambda n, d, r: {"exists": local.collection_exists(n)},
            ("GET", ""): lambda n, d, r: local.get_collection(n),
            ("PUT", ""): lambda n, d, r: local.create_collection(
                n, **_arguments(local.create_collection, qm.CreateCollection.model_validate(d), _CREATE_NAMES)
            ),
            ("DELETE", ""): lambda n, d, r: local.delete_collection(n),
            ("PUT", "/index"): lambda n, d, r: local.create_payload_index(
                n, **_fields(qm.CreateFieldIndex, d, "field_name", "field_schema")
            ),
            ("PUT", "/vectors/*"): lambda n, d, r: local.create_vector_name(
                n, r.rsplit("/", 1)[1], TypeAdapter(qm.VectorNameConfig).validate_python(d)
            ),
            ("PUT", "/points"): lambda n, d, r: local.upsert(n, points=_points(d)),
            ("POST", "/points"): lambda n, d, r: local.retrieve(
                n,
                **_fields(
                    qm.PointRequest, d, "ids", "with_payload", "with_vector", with_vector="with_vectors"
                ),
            ),
            ("POST", "/points/scroll"): lambda n, d, r: _scroll(local, n, d),
            ("POST", "/points/count"): lambda n, d, r: local.count(
                n, **_fields(qm.CountRequest, d, "filter", "exact", filter="count_filter")
            ),
            ("POST", "/facet"): lambda n, d, r: local.facet(
                n, **_fields(qm.FacetRequest, d, "key", "filter", "limit", "exact", filter="facet_filter")
            ),
            ("POST", "/points/query/batch"): lambda n, d, r: local.query_batch_points(
                n, requests=qm.QueryRequestBatch.model_validate(d).searches
            ),
            ("POST", "/points/batch"): lambda n, d, r: local.batch_update_points(
                n, update_operations=qm.UpdateOperations.model_validate(d).operations
            ),
            ("POST", "/points/delete"): lambda n, d, r: local.delete(
                n, points_selector=TypeAdapter(qm.PointsSelector).validate_python(d)
            ),
        }


#: REST field names of a new collection -> the client's argument names.
_CREATE_NAMES = {"vectors": "vectors_config", "sparse_vectors": "sparse_vectors_config"}


def _arguments(method: Callable[..., Any], parsed: BaseModel, renamed: dict[str, str]) -> dict[str, Any]:
    """The fields of ``parsed`` that ``method`` takes (by the client's names), those that are set."""
    accepted = inspect.signature(method).parameters
    values = {renamed.get(k, k): v for k, v in parsed if v is not None}
    return {k: v for k, v in values.items() if k in accepted}


def _fields(model: type[BaseModel], data: dict[str, Any], *names: str, **renamed: str) -> dict[str, Any]:
    """The named fields of ``data`` parsed as ``model``, under the client's argument names."""
    parsed = model.model_validate(data)
    return {renamed.get(n, n): getattr(parsed, n) for n in names if getattr(parsed, n) is not None}


def _points(data: dict[str, Any]) -> Any:
    """An upsert's body as the client's ``points`` argument (a list of points, or a batch)."""
    body = TypeAdapter(qm.PointInsertOperations).validate_python(data)
    return body.points if isinstance(body, qm.PointsList) else body.batch


def _scroll(local: QdrantClient, name: str, data: dict[str, Any]) -> dict[str, Any]:
    request = qm.ScrollRequest.model_validate(data)
    points, following = local.scroll(
        name,
        scroll_filter=request.filter,
        limit=request.limit or 10,
        offset=request.offset,
        with_payload=request.with_payload if request.with_payload is not None else True,
        with_vectors=request.with_vector if request.with_vector is not None else False,
    )
    return {"points": _json(points), "next_page_offset": following}


__all__ = ["StoredQdrant"]
