"""``create_app(backend, …) -> FastAPI``: the search page (``GET /``, ``/static``) and ``/api``.

``backend`` is anything with the search engine's four calls (``SearchBackend``): the in-process
``histo.search.SearchEngine`` over the embedded index, or ``histo.client.SearchClient`` talking to
a running ``histocli serve``; they return the same dataclasses, so every route is written once.

Safety, in the order a request meets it:

* **Body limit** (``max_upload_bytes``, the gRPC message limit): a larger request is refused with
  413 before its body is read (``Content-Length``) or as soon as it grows past the limit (chunked).
* **Token** (``token``): when set, every ``/api`` route but ``/api/health`` needs
  ``Authorization: Bearer <token>`` or the cookie ``histo_token`` (what the page sets, so that
  ``<img src=/api/tiles/…>`` works); else 401.
* **Errors** go through the one table of ``services/web/errors.py`` and are JSON, never a trace.

Every request is counted and timed, and runs under a request id (``services/web/observe.py``);
Prometheus scrapes ``GET /metrics`` on the page's own port, the place it looks by default (no
token: like ``/api/health`` it is for the operator's tools, and it holds figures, not data).

The OpenAPI description is at ``/api/openapi.json``; FastAPI's interactive docs are off because they
load their scripts from a CDN, and the page must work without the internet.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from histo.data.tile_source import TileImage, TileView
from histo.errors import HistoError
from histo.heatmap import Heatmap
from histo.prometheus import new_registry
from histo.search import EncoderInfo, Feedback, IndexStats, SearchResult
from histo.slide_search import SlideSearchResult
from histo.store import SearchFilter
from services.web.errors import HttpError, UnauthorisedError, describe_validation, http_error_of
from services.web.observe import HttpMetrics, Observe, templates_of

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "histo_token"
#: The most of a refused body read before answering 413 (beyond it the connection is just closed).
DRAIN_BYTES = 256 * 1024 * 1024
#: Routes open without a token: load balancers and orchestrators probe health without one.
OPEN_PATHS = ("/api/health",)
UNAUTHORISED_MESSAGE = (
    "missing or wrong token: send 'Authorization: Bearer <token>' (or the histo_token cookie) "
    "with the server's HISTO_WEB__TOKEN"
)


class SearchBackend(Protocol):
    """What the routes call: ``SearchEngine`` in-process, or ``SearchClient`` over gRPC."""

    def search(
        self,
        *,
        image: bytes | None = None,
        point_id: str | None = None,
        vector: Sequence[float] | None = None,
        encoder: str | None = None,
        encoders: Sequence[str] | None = None,
        fusion: str = "rrf",
        feedback: Feedback | None = None,
        diversity: float | None = None,
        top_k: int = 10,
        filter: SearchFilter | None = None,
        per_image: int | None = None,
        include_same_image: bool = False,
        mpp: float | None = None,
        exact: bool = False,
    ) -> SearchResult: ...

    def list_encoders(self) -> list[EncoderInfo]: ...

    def stats(self) -> IndexStats: ...

    def search_slides(
        self,
        *,
        image: bytes | None = None,
        slide_id: str | None = None,
        encoder: str | None = None,
        top_k: int = 10,
        filter: SearchFilter | None = None,
        tiles_per_slide: int = 3,
        mpp: float | None = None,
        exact: bool = False,
    ) -> SlideSearchResult: ...

    def heatmap(
        self,
        *,
        slide_id: str,
        image: bytes | None = None,
        point_id: str | None = None,
        encoder: str | None = None,
        size: int | None = None,
        best: int = 3,
        mpp: float | None = None,
    ) -> Heatmap: ...

    def tile(
        self, point_id: str, *, view: TileView | str = ..., size: int | None = ..., fmt: str = ...
    ) -> TileImage: ...


class _TooLarge(Exception):
    """Raised inside ``receive`` when a body outgrows the limit."""


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 (pure ASGI: nothing is buffered).

    The rest of a refused body is read and dropped (up to ``DRAIN_BYTES``) before answering, so
    that a browser or client still sending sees the 413 and its reason, not a reset connection.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            if int(length) <= DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES)
            await self._refuse(int(length), scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        too_large = False
        try:
            await self.app(scope, counting_receive, tracking_send)
        except* _TooLarge:  # bare, or grouped by a middleware's task group
            too_large = True
        if too_large and not started:
            await _drain(receive, DRAIN_BYTES)
            await self._refuse(seen, scope, receive, send)

    async def _refuse(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        mib = self.limit / (1024 * 1024)
        error = HttpError(
            413,
            "MessageTooLargeError",
            f"the request has {size:,} bytes or more, over the limit of {mib:g} MiB; send a smaller "
            "image or raise HISTO_GRPC__MAX_MESSAGE_MB on the server",
        )
        await error.response()(scope, receive, send)


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, at most ``budget`` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


def _token_of(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ")
    return request.cookies.get(TOKEN_COOKIE, "")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's description plus the schemas of the bodies the routes parse themselves."""
    from fastapi.openapi.utils import get_openapi

    from services.web.api import BODY_MODELS

    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in BODY_MODELS:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = spec
    return app.openapi_schema


def create_app(
    backend: SearchBackend,
    *,
    token: str | None = None,
    max_upload_bytes: int = 32 * 1024 * 1024,
    max_pixels: int = 250_000_000,
    secrets: Iterable[str] = (),
    title: str = "histo",
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The page and the API over ``backend`` (see the module docstring); request metrics go to
    ``registry`` (default: a new one), served at ``/metrics``."""
    from services.web.api import router

    app = FastAPI(
        title=f"{title} search API",
        summary="Find indexed histopathology tiles similar to a query; mirrors the gRPC SearchService.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.backend = backend
    app.state.max_pixels = max_pixels
    hidden = (token or "", *secrets)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        path = request.url.path
        guarded = bool(token) and path.startswith("/api") and path not in OPEN_PATHS
        if guarded and not hmac.compare_digest(_token_of(request).encode(), (token or "").encode()):
            return http_error_of(UnauthorisedError(UNAUTHORISED_MESSAGE)).response()
        response: Response = await call_next(request)
        return response

    @app.exception_handler(HistoError)
    async def histo_error(request: Request, exc: HistoError) -> JSONResponse:
        return http_error_of(exc, hidden, request.url.path).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return HttpError(422, "InvalidInputError", describe_validation(exc.errors())).response()

    @app.exception_handler(HTTPException)
    async def http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        error_class = "NotFoundError" if exc.status_code == 404 else "InvalidInputError"
        return HttpError(exc.status_code, error_class, f"{exc.detail}: {request.url.path}").response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return http_error_of(exc, hidden, request.url.path).response()

    app.include_router(router, prefix="/api")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    metrics = HttpMetrics(registry if registry is not None else new_registry())
    templates = [*templates_of(router.routes, "/api"), *templates_of(app.router.routes)]
    app.add_middleware(Observe, metrics=metrics, templates=templates)  # outermost: sees every answer
    return app


__all__ = ["OPEN_PATHS", "TOKEN_COOKIE", "BodyLimit", "SearchBackend", "create_app"]
