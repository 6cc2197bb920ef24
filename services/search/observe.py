"""Every call, counted, timed and tagged: request metrics and the request id (an interceptor).

``ObservingInterceptor`` is the server's first interceptor, so it sees every call that reaches a
method of this server, refused ones (UNAUTHENTICATED from the token check) and failed ones
included, each with the status code it really ended with. Calls to methods that do not exist are
left to gRPC (UNIMPLEMENTED, uncounted: a scanner's made-up names would be unbounded label values),
and so are requests gRPC refuses before any handler runs (over the message limit) and health
``Watch`` streams, which gRPC answers without holding a thread as long as they are left unwrapped.

Metrics, named as go-grpc-prometheus names them so that existing dashboards work:

| metric | type | labels |
|---|---|---|
| ``grpc_server_handled_total`` | counter | ``grpc_type``, ``grpc_service``, ``grpc_method``, ``grpc_code`` |
| ``grpc_server_handling_seconds`` | histogram | ``grpc_type``, ``grpc_service``, ``grpc_method`` |

Each call runs in ``histo.observability.request_scope``: the caller's ``x-request-id`` metadata (or
a new id) is on every log line of the call and comes back in the response's initial metadata. At
DEBUG, each call logs one line: method, status code and milliseconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from histo.observability import REQUEST_ID_KEY, request_id_of, request_scope

log = logging.getLogger("services.search")

#: Handler attribute -> (its factory, go-grpc-prometheus's grpc_type).
KINDS: tuple[tuple[str, Callable[..., grpc.RpcMethodHandler], str], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, "unary"),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, "server_stream"),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, "client_stream"),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, "bidi_stream"),
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def with_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any], str], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` whose behaviour is ``wrap(behaviour, grpc_type)``."""
    for attribute, make, kind in KINDS:
        behavior = getattr(handler, attribute, None)
        if behavior is not None:
            return make(
                wrap(behavior, kind),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise AssertionError(f"unknown handler kind: {handler!r}")  # pragma: no cover


class GrpcMetrics:
    """The request counter and latency histogram, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            labels,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )

    def record(self, kind: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.handled.labels(kind, service, name, code.name).inc()
        self.handling.labels(kind, service, name).observe(seconds)


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | bytes | None:
    for name, value in details.invocation_metadata or ():
        if name == key:
            return value
    return None


def _non_blocking(handler: grpc.RpcMethodHandler) -> bool:
    """A behaviour gRPC calls with a response callback (health ``Watch``): it returns at once and
    holds no thread while it streams; wrapped, it would fall back to holding one."""
    return any(
        getattr(getattr(handler, attribute, None), "experimental_non_blocking", False)
        for attribute, _, _ in KINDS
    )


class ObservingInterceptor(grpc.ServerInterceptor):
    """Counts and times every call, and runs it under its request id (module docstring)."""

    def __init__(self, metrics: GrpcMetrics) -> None:
        self.metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or _non_blocking(handler):
            return handler
        method = handler_call_details.method or ""
        request_id = request_id_of(_metadata_value(handler_call_details, REQUEST_ID_KEY))

        def wrap(behavior: Callable[..., Any], kind: str) -> Callable[..., Any]:
            if kind in ("server_stream", "bidi_stream"):
                return self._streaming(behavior, kind, method, request_id)
            return self._unary(behavior, kind, method, request_id)

        return with_behavior(handler, wrap)

    def _unary(
        self, behavior: Callable[..., Any], kind: str, method: str, request_id: str
    ) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            with request_scope(request_id):
                context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
                try:
                    response = behavior(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except Exception:
                    code = context.code() or grpc.StatusCode.UNKNOWN  # abort() set it; else gRPC says UNKNOWN
                    raise
                finally:
                    self._done(kind, method, code, time.perf_counter() - started)

        return observed

    def _streaming(
        self, behavior: Callable[..., Any], kind: str, method: str, request_id: str
    ) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with request_scope(request_id):
                context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
            try:
                yield from behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except GeneratorExit:  # the client went away
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self._done(kind, method, code, time.perf_counter() - started)

        return observed

    def _done(self, kind: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.metrics.record(kind, method, code, seconds)
        log.debug("%s %s %.1f ms", method, code.name, seconds * 1000)


__all__ = ["GrpcMetrics", "ObservingInterceptor", "with_behavior"]
