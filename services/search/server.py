"""``create_server(cfg, engine) -> (server, port)``: the search servicer, health and reflection on
one gRPC server, with message limits, an optional bearer token and optional TLS.

* **Health** (``grpc.health.v1``): NOT_SERVING until the engine exists (its encoders loaded and
  warmed up), SERVING from then on, NOT_SERVING again as soon as shutdown starts. ``engine`` may
  be a ready ``SearchEngine`` or a zero-argument function that builds one: the server then loads
  it in a background thread after ``start()``, answers health checks at once, and answers other
  calls UNAVAILABLE until it is done (``SearchServer.wait_ready`` reports a failed load).
* **Reflection** lists the search service, health and reflection itself.
* **Limits**: ``max_receive_message_length`` / ``max_send_message_length`` are
  ``cfg.max_message_mb`` MiB; a larger request is refused by gRPC with RESOURCE_EXHAUSTED.
* **Token**: with ``cfg.token`` set, every call but health checks needs the metadata
  ``authorization: Bearer <token>`` (compared in constant time), else UNAUTHENTICATED.
* **TLS** when both ``cfg.tls_cert`` and ``cfg.tls_key`` are set (PEM files).
* **Shutdown**: ``serve_until_signalled`` stops on SIGTERM or SIGINT: health goes NOT_SERVING,
  new calls are refused, calls in flight get ``grace`` seconds to finish.
* **Observed**: every call is counted and timed into ``SearchServer.registry`` and runs under a
  request id (``services/search/observe.py``).
"""

from __future__ import annotations

import hmac
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from histo.errors import HistoError, InvalidInputError
from histo.prometheus import new_registry
from histo.rpc.v1 import search_pb2_grpc
from histo.search import SearchEngine
from histo.settings import GrpcSettings
from histo.snapshots import SnapshotTaker
from services.search.errors import NotReadyError
from services.search.observe import GrpcMetrics, ObservingInterceptor, with_behavior
from services.search.servicer import SERVICE_NAME, SearchServicer

log = logging.getLogger("services.search")

MIB = 1024 * 1024
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: Methods that need no token: load balancers and orchestrators probe health without one.
OPEN_METHOD_PREFIXES = (f"/{HEALTH_SERVICE}/",)
UNAUTHENTICATED_MESSAGE = (
    "missing or wrong token: send the metadata 'authorization: Bearer <token>' "
    "with the server's HISTO_GRPC__TOKEN"
)


# ------------------------------------------------------------------------------------------------
# Token check
# ------------------------------------------------------------------------------------------------


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls without ``authorization: Bearer <token>`` (health checks excepted)."""

    def __init__(self, token: str, open_prefixes: Iterable[str] = OPEN_METHOD_PREFIXES) -> None:
        if not token:
            raise InvalidInputError("the service token is empty; unset HISTO_GRPC__TOKEN or give a value")
        self._expected = f"Bearer {token}".encode()
        self._open = tuple(open_prefixes)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if method.startswith(self._open) or self._authorised(handler_call_details):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        return None if handler is None else _refusal(handler)

    def _authorised(self, details: grpc.HandlerCallDetails) -> bool:
        supplied: str | bytes = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                supplied = value
                break
        given = supplied.encode() if isinstance(supplied, str) else bytes(supplied)
        return hmac.compare_digest(given, self._expected)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED."""

    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    return with_behavior(handler, lambda _behavior, _kind: deny)


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------


class SearchServer:
    """A gRPC server with its health servicer and the engine (or the function that builds it)."""

    def __init__(
        self,
        server: grpc.Server,
        health_servicer: health.HealthServicer,
        address: str,
        engine: SearchEngine | Callable[[], SearchEngine],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.grpc_server = server
        self.health = health_servicer
        self.address = address
        #: The server's Prometheus metrics (``services.search.observe``), for ``serve_metrics``.
        self.registry = registry if registry is not None else new_registry()
        self._ready = threading.Event()
        self._engine: SearchEngine | None = None
        self._factory: Callable[[], SearchEngine] | None = None
        self._error: BaseException | None = None
        if isinstance(engine, SearchEngine):
            self._engine = engine
        else:
            self._factory = engine
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving; health turns SERVING now (ready engine) or once the engine is built."""
        self.grpc_server.start()
        if self._engine is not None:
            self._mark_ready()
        else:
            threading.Thread(target=self._load, name="histo-load-encoders", daemon=True).start()

    def wait_ready(self, timeout: float | None = None) -> SearchEngine:
        """The engine once loaded; re-raises a failed load, ``NotReadyError`` after ``timeout``."""
        if not self._ready.wait(timeout):
            raise NotReadyError(f"the search service did not load its encoders within {timeout} s")
        if self._engine is None:
            assert self._error is not None
            raise self._error
        return self._engine

    def stop(self, grace: float | None = 5.0) -> threading.Event:
        """Health NOT_SERVING, refuse new calls, give calls in flight ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        return self.grpc_server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self.grpc_server.wait_for_termination(timeout))

    # -- engine access (the servicer's) ----------------------------------------------------------

    def engine(self) -> SearchEngine:
        if self._engine is not None:
            return self._engine
        if self._error is not None:
            raise NotReadyError(f"the search service failed to load its encoders: {self._error}")
        raise NotReadyError("the search service is still loading its encoders; retry in a moment")

    def _load(self) -> None:
        assert self._factory is not None
        try:
            self._engine = self._factory()
        except BaseException as exc:
            self._error = exc
            log.error("loading the encoders failed: %s", exc, exc_info=not isinstance(exc, HistoError))
            self._ready.set()
            return
        self._mark_ready()

    def _mark_ready(self) -> None:
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._ready.set()

    def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)  # ignored once graceful shutdown has begun


def _host_port(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{port}"


def _server_credentials(cert: Path | None, key: Path | None) -> grpc.ServerCredentials | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise InvalidInputError(
            "TLS needs both a certificate and a key: set HISTO_GRPC__TLS_CERT and HISTO_GRPC__TLS_KEY, "
            "or neither"
        )
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read the TLS file {exc.filename}: {exc.strerror}; check HISTO_GRPC__TLS_*"
        ) from None
    return grpc.ssl_server_credentials([pair])


def create_server(
    cfg: GrpcSettings,
    engine: SearchEngine | Callable[[], SearchEngine],
    *,
    max_workers: int | None = None,
    secrets: Iterable[str] = (),
    registry: CollectorRegistry | None = None,
    snapshots: SnapshotTaker | None = None,
) -> tuple[SearchServer, int]:
    """Build and bind (not start) the search server on ``cfg.host:cfg.port``; port 0 picks a free
    one, returned beside the server; ``max_workers`` RPC threads (default ``cfg.workers``).
    ``secrets`` are extra values to keep out of messages and logs
    (the token always is). Request metrics go to ``registry`` (default: a new one), which the
    server keeps as ``.registry``. ``snapshots`` lets clients ask for a snapshot of the index the
    server owns (``CreateSnapshot``)."""
    token = cfg.token.get_secret_value() if cfg.token is not None else ""
    limit = cfg.max_message_mb * MIB
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
    ]
    registry = registry if registry is not None else new_registry()
    # first, so that calls the token check refuses are counted and tagged too
    interceptors: list[grpc.ServerInterceptor] = [ObservingInterceptor(GrpcMetrics(registry))]
    if token:
        interceptors.append(TokenInterceptor(token))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers or cfg.workers, thread_name_prefix="histo-rpc"),
        interceptors=interceptors,
        options=options,
    )
    health_servicer = health.HealthServicer()
    address = _host_port(cfg.host, cfg.port)
    wrapper = SearchServer(server, health_servicer, address, engine, registry)
    search_pb2_grpc.add_SearchServiceServicer_to_server(
        SearchServicer(
            wrapper.engine, secrets=(token, *secrets), snapshots=snapshots, open_snapshots=bool(token)
        ),
        server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    credentials = _server_credentials(cfg.tls_cert, cfg.tls_key)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        port, reason = 0, str(exc)
    else:
        reason = ""
    if not port:
        raise InvalidInputError(
            f"cannot listen on {address}: the port is in use or not allowed ({reason or 'bind failed'}); "
            "choose another with --port or HISTO_GRPC__PORT"
        )
    wrapper.address = _host_port(cfg.host, port)
    return wrapper, port


def serve_until_signalled(server: SearchServer, grace: float = 5.0) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully (main thread only)."""
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("%s: stopping, %s s for calls in flight", received[0] if received else "stop", grace)
        server.stop(grace).wait()


__all__ = [
    "HEALTH_SERVICE",
    "SearchServer",
    "TokenInterceptor",
    "create_server",
    "serve_until_signalled",
]
