"""``python -m services.web [--host H] [--port P] [--server HOST:PORT]``: the search page (``histocli web``).

An entry point: the only place in ``services.web`` that reads the settings (``HISTO_*``). Without
``--server`` it opens the index and loads the searchable encoders in this process (and so owns
the embedded index while it runs); with ``--server`` it searches through a running
``histocli serve`` with the token of HISTO_GRPC__TOKEN and, for TLS, the CA of ``--tls-ca``
(default HISTO_GRPC__TLS_CERT). It prints ``open http://HOST:PORT`` and runs until Ctrl-C or
SIGTERM. Errors are one ``error:`` line on stderr and exit code 1. Logs are text or JSON lines
(HISTO_LOG__FORMAT); Prometheus metrics are at ``/metrics`` (with the index's gauges and the
embedding times too when the engine runs in this process).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry

from histo.errors import HistoError
from histo.observability import configure_logging
from histo.prometheus import IndexCollector, MeteredEngine, embed_histogram, new_registry
from histo.search import SearchEngine
from histo.settings import Settings, get_settings
from services.web.app import SearchBackend, create_app
from services.web.server import WebServer

MIB = 1024 * 1024


@contextlib.contextmanager
def open_backend(
    settings: Settings,
    server: str | None,
    tls_ca: Path | None,
    registry: CollectorRegistry,
    stale: str = "refuse",
) -> Iterator[SearchBackend]:
    """A ``SearchClient`` of ``server``, or a ``SearchEngine`` over the configured store (whose
    figures and embedding times then go to ``registry``)."""
    if server:
        from histo.client import SearchClient

        ca = tls_ca or settings.grpc.tls_cert
        with SearchClient(server, token=settings.grpc.token, tls_ca=ca) as client:
            yield client
        return
    from histo.store import open_store

    store = open_store(
        url=settings.qdrant.url,
        api_key=settings.qdrant.api_key,
        path=settings.index_dir,
        collection=settings.qdrant.collection,
        options=settings.qdrant.index_options(),
    )
    grpc = settings.grpc  # concurrent uploads batched on one embedding thread, as the gRPC server does
    with store:
        registry.register(IndexCollector(store))
        engine = MeteredEngine.from_settings(
            store, settings, batching=grpc.batching(), embed_seconds=embed_histogram(registry), stale=stale
        )
        try:
            yield engine
        finally:
            engine.close()


def describe(backend: SearchBackend, server: str | None) -> str:
    """One line: what the page searches; a backend that does not answer yet is a warning, not fatal."""
    where = f"the search server at {server}" if server else "the embedded index"
    try:
        names = ", ".join(i.name for i in backend.list_encoders()) or "none (ingest with an encoder first)"
    except HistoError as exc:
        return f"{where}, which does not answer yet ({exc})"
    return f"{where} with encoders: {names}"


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m services.web", description=__doc__)
    parser.add_argument("--host", default=settings.web.host, help="address to bind (HISTO_WEB__HOST)")
    parser.add_argument("--port", type=int, default=settings.web.port, help="0 picks a free port")
    parser.add_argument("--server", default=None, help="HOST:PORT of a running histocli serve")
    parser.add_argument("--tls-ca", type=Path, default=None, help="CA certificate (PEM) for a TLS server")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--allow-stale",
        action="store_true",
        help="search with an encoder even when the index holds vectors another artifact of its name made",
    )
    options = parser.parse_args(argv)
    configure_logging(options.log_level, settings.log.format)
    registry = new_registry()
    token = settings.web.token.get_secret_value() if settings.web.token else None
    secrets = [s.get_secret_value() for s in (settings.grpc.token, settings.qdrant.api_key) if s is not None]
    try:
        stale = "warn" if options.allow_stale else "refuse"
        with open_backend(settings, options.server, options.tls_ca, registry, stale) as backend:
            app = create_app(
                backend,
                token=token,
                max_upload_bytes=settings.grpc.max_message_mb * MIB,
                max_pixels=settings.images.max_pixels,
                secrets=secrets,
                registry=registry,
            )
            json_logs = settings.log.format == "json"
            web = WebServer(
                app, options.host, options.port, options.log_level.lower(), uvicorn_logging=not json_logs
            )
            if isinstance(backend, SearchEngine):
                backend.store.announce(web=web.url)
            print(f"searching {describe(backend, options.server)}", flush=True)
            for name, why in getattr(backend, "stale", {}).items():
                print(f"warning: not offering {name}: {why}", file=sys.stderr, flush=True)
            print(f"open {web.url} in a browser{' (token required)' if token else ''}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                web.run()
            print("stopped", flush=True)
            return 0
    except HistoError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the encoders load; once serving, it stops gracefully
        print("interrupted; rerun the same command to start again", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
