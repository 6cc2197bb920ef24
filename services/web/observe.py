"""Every HTTP request, counted, timed and tagged: request metrics and the request id (pure ASGI).

``Observe`` is the app's outermost middleware, so it sees every answer, the 413 of the body limit
and the 401 of the token check included. Requests are labelled with their route's template
(``/api/tiles/{point_id}``, ``/static``), never the raw path, which would make a label value per
tile id; a path no route knows is ``unmatched``. ``/metrics`` itself is not counted.

Metrics, named as prometheus-fastapi-instrumentator names them so that existing dashboards work:

| metric | type | labels |
|---|---|---|
| ``http_requests_total`` | counter | ``method``, ``handler``, ``status`` |
| ``http_request_duration_seconds`` | histogram | ``method``, ``handler`` |

Each request runs in ``histo.observability.request_scope``: the ``X-Request-Id`` header (or a new
id) is on every log line of the request and comes back as the response's ``X-Request-Id``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from histo.observability import REQUEST_ID_KEY, request_id_of, request_scope

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpMetrics:
    """The request counter and latency histogram, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by route, method and status.",
            ["method", "handler", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, in seconds.",
            ["method", "handler"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )


#: A route's path pattern and its template.
Template = tuple[re.Pattern[str], str]


def templates_of(routes: Iterable[BaseRoute], prefix: str = "") -> list[Template]:
    """The pattern and template of each route with a path; ``prefix``: the routes of a router
    included under it (kept apart, as FastAPI's own included routers do not expose theirs)."""
    found: list[Template] = []
    for route in routes:
        path, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
        if isinstance(path, str) and pattern is not None:
            found.append((compile_path(prefix + path)[0] if prefix else pattern, prefix + path))
    return found


def route_of(templates: list[Template], path: str) -> str:
    """The template of the first route whose pattern takes ``path``; known before the app runs, so
    that the 401 of the token check and the 413 of the body limit are labelled too."""
    for pattern, template in templates:
        if pattern.match(path):
            return template
    return UNMATCHED


class Observe:
    """Count, time and tag each HTTP request (module docstring)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, templates: list[Template]) -> None:
        self.app, self.metrics, self.templates = app, metrics, templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        request_id = request_id_of(headers.get(REQUEST_ID_KEY.encode()))
        if scope["path"] == METRICS_PATH:
            await self._scrape(request_id)(scope, receive, send)
            return
        handler, method = route_of(self.templates, scope["path"]), scope["method"]
        status = 500  # unless an answer starts

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_KEY.encode(), request_id.encode())]
            await send(message)

        started = time.perf_counter()
        try:
            with request_scope(request_id):
                await self.app(scope, receive, tagged_send)
        finally:
            self.metrics.requests.labels(method, handler, str(status)).inc()
            self.metrics.duration.labels(method, handler).observe(time.perf_counter() - started)

    def _scrape(self, request_id: str) -> Response:
        headers = {REQUEST_ID_KEY: request_id, "Cache-Control": "no-store"}
        return Response(
            generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST, headers=headers
        )


__all__ = ["METRICS_PATH", "HttpMetrics", "Observe", "route_of", "templates_of"]
