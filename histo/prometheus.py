"""Prometheus metrics shared by the runtimes: a registry, its HTTP endpoint, the index's gauges and
the embedding time of queries.

Each server gets its own ``CollectorRegistry`` (``new_registry``) rather than the process-wide
default, so that two servers in one process (the tests) count apart. The runtimes add their own
request metrics: ``services/search`` (gRPC), ``services/web`` (HTTP), ``workers`` (Celery tasks).

| metric | type | labels |
|---|---|---|
| ``histo_index_points`` | gauge | — |
| ``histo_index_dataset_points`` | gauge | ``dataset`` |
| ``histo_index_encoder_points`` | gauge | ``encoder`` |
| ``histo_embed_seconds`` | histogram | ``encoder`` |
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from histo.errors import HistoError, InvalidInputError
from histo.search import SearchEngine
from histo.store import VectorStore

log = logging.getLogger("histo.prometheus")

#: Seconds between two reads of the index's figures: scrapes closer together share one read.
INDEX_STATS_TTL_S = 5.0
#: Query embedding takes milliseconds (one tile, a GPU) to seconds (many tiles, a busy CPU).
EMBED_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def new_registry() -> CollectorRegistry:
    """A registry with the process's CPU, memory, GC and Python version, as the default one has."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve_metrics(registry: CollectorRegistry, host: str, port: int, setting: str) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread (0 picks a free port:
    ``.server_port``; ``.shutdown()`` stops it). A taken port is one ``InvalidInputError`` naming
    ``setting``, the way out."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); choose another port with "
            f"{setting}, or 0 to turn the metrics off"
        ) from None
    return server


class IndexCollector:
    """Points in the index, in all, per data set and per encoder, read from ``store.stats()`` when
    Prometheus scrapes. The store serialises its own calls (the embedded one holds its lock per
    primitive), so searches interleave with a scrape; scrapes within ``ttl_s`` share one read."""

    def __init__(self, store: VectorStore, ttl_s: float = INDEX_STATS_TTL_S) -> None:
        self.store, self.ttl_s = store, ttl_s
        self._lock = threading.Lock()
        self._figures: dict[str, Any] | None = None
        self._read_at = 0.0

    def collect(self) -> Iterable[Metric]:
        figures = self._read()
        if figures is None:
            return []
        total = GaugeMetricFamily("histo_index_points", "Points (tiles) in the index.")
        total.add_metric([], int(figures.get("points", 0)))
        datasets = GaugeMetricFamily(
            "histo_index_dataset_points", "Points in the index per data set.", labels=["dataset"]
        )
        for name, count in (figures.get("datasets") or {}).items():
            datasets.add_metric([name], int(count))
        encoders = GaugeMetricFamily(
            "histo_index_encoder_points", "Points holding each encoder's vector.", labels=["encoder"]
        )
        for name, vector in (figures.get("vectors") or {}).items():
            encoders.add_metric([name], int(vector.get("points", 0)))
        return [total, datasets, encoders]

    def _read(self) -> dict[str, Any] | None:
        with self._lock:
            if self._figures is None or time.monotonic() - self._read_at >= self.ttl_s:
                try:
                    self._figures = self.store.stats()
                except HistoError as exc:  # a scrape must answer; the gauges are left out meanwhile
                    log.warning("index figures unavailable for the metrics: %s", exc)
                    return None
                self._read_at = time.monotonic()
            return self._figures


def embed_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "histo_embed_seconds",
        "Time to embed one query's tiles with one encoder, waiting for a shared forward pass included.",
        ["encoder"],
        registry=registry,
        buckets=EMBED_BUCKETS,
    )


class MeteredEngine(SearchEngine):
    """A ``SearchEngine`` that times each query embedding (uploads, example images) per encoder;
    the warm-up pass is not counted. Build it as the engine: ``MeteredEngine.from_settings(...,
    embed_seconds=embed_histogram(registry))``."""

    def __init__(self, *args: Any, embed_seconds: Histogram, **kwargs: Any) -> None:
        self._embed_seconds = embed_seconds
        super().__init__(*args, **kwargs)

    def _embed(self, name: str, tiles: list[Any]) -> list[Any]:
        started = time.perf_counter()
        try:
            return super()._embed(name, tiles)
        finally:
            self._embed_seconds.labels(name).observe(time.perf_counter() - started)


__all__ = [
    "IndexCollector",
    "MeteredEngine",
    "embed_histogram",
    "new_registry",
    "serve_metrics",
]
