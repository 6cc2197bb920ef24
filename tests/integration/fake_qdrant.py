"""A stand-in for a Qdrant server's REST API, on a free loopback port, for fault and security tests.

No Qdrant server can be installed here, and qdrant-client's local mode has no network side. This
answers the few calls ``histocli serve`` makes to start (version, collection exists, collection
info) and to search (query, retrieve: always empty), records every request with its headers, and
can be stopped mid-test so that the real qdrant-client in the server meets a refused connection.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client import models as qm


@dataclass(frozen=True)
class SeenRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]


def _searches(body: bytes) -> list[Any]:
    """The searches of a batch query's JSON body ([] when it is not one)."""
    try:
        searches = json.loads(body or b"{}").get("searches")
    except (ValueError, AttributeError):
        return []
    return searches if isinstance(searches, list) else []


def collection_info(vectors: dict[str, int]) -> dict[str, Any]:
    """A valid ``GET /collections/{name}`` result, made by qdrant-client's own local mode."""
    local = QdrantClient(location=":memory:")
    try:
        config = {
            name: qm.VectorParams(size=dim, distance=qm.Distance.COSINE) for name, dim in vectors.items()
        }
        local.create_collection("histo", vectors_config=config)
        return local.get_collection("histo").model_dump(mode="json")
    finally:
        local.close()


class FakeQdrant:
    """``with FakeQdrant({"colorhist": 24}) as fake: fake.url``; ``fake.stop()`` refuses from then on.

    ``port`` binds a given port (a server "coming back"); ``fail_with`` answers every request with
    that HTTP status, as a Qdrant behind a proxy does while it restarts. As a server does, it counts
    the values of a payload field (facet: none, it holds no points) only once the field has an index.
    """

    def __init__(
        self, vectors: dict[str, int], collection: str = "histo", port: int = 0, fail_with: int | None = None
    ) -> None:
        self.collection = collection
        self.fail_with = fail_with
        self.requests: list[SeenRequest] = []
        self._info = collection_info(vectors)
        self.indexed: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-qdrant", daemon=True)
        self._running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeQdrant:
        self._thread.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Close the listening socket: every later connection is refused."""
        if self._running:
            self._running = False
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeQdrant:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        """(HTTP status, JSON result) for one call of the REST API (a batch query: one empty
        answer per search in ``body``)."""
        if self.fail_with is not None:
            return self.fail_with, {"status": {"error": "service unavailable (fake)"}}
        base = f"/collections/{self.collection}"
        routes: dict[tuple[str, str], Any] = {
            ("GET", "/"): {"title": "qdrant - fake", "version": importlib.metadata.version("qdrant-client")},
            ("GET", f"{base}/exists"): {"result": {"exists": True}},
            ("GET", base): {"result": self._info},
            ("POST", f"{base}/points/query"): {"result": {"points": []}},
            ("POST", f"{base}/points/query/batch"): {"result": [{"points": []} for _ in _searches(body)]},
            ("POST", f"{base}/points"): {"result": []},
        }
        if (method, path) == ("PUT", f"{base}/index"):
            self.indexed.add(json.loads(body or b"{}").get("field_name", ""))
            routes[(method, path)] = {"result": {"operation_id": 0, "status": "completed"}}
        if (method, path) == ("POST", f"{base}/facet"):
            key = json.loads(body or b"{}").get("key", "")
            if key not in self.indexed:
                return 400, {"status": {"error": f"Bad request: No appropriate index for faceting: `{key}`"}}
            routes[(method, path)] = {"result": {"hits": []}}
        answer = routes.get((method, path))
        if answer is None:
            return 404, {"status": {"error": f"fake qdrant has no {method} {path}"}}
        return 200, {**answer, "status": "ok", "time": 0.0} if path != "/" else answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                sent = self.rfile.read(length) if length else b""
                path = re.sub(r"\?.*$", "", self.path)
                with fake._lock:
                    fake.requests.append(SeenRequest(self.command, path, dict(self.headers.items())))
                status, body = fake.answer(self.command, path, sent)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _reply

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read self.requests
                pass

        return Handler
