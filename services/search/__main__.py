"""``python -m services.search [--host H] [--port P]``: run the gRPC search service (``histocli serve``).

An entry point: the only place in ``services`` that reads the settings (``HISTO_*``). It opens the
store (and so owns the embedded index while it runs), binds the port, prints one line
``listening on HOST:PORT``, loads and warms up the searchable encoders (health SERVING from then
on), prints ``serving …`` and runs until SIGTERM or SIGINT. Errors are one ``error:`` line on
stderr and exit code 1. Logs are text or JSON lines (HISTO_LOG__FORMAT); with
HISTO_METRICS__SEARCH_PORT set, Prometheus metrics are at ``http://HISTO_METRICS__HOST:PORT/metrics``.
"""

from __future__ import annotations

import argparse
import sys

from histo.errors import HistoError
from histo.observability import configure_logging
from histo.prometheus import IndexCollector, MeteredEngine, embed_histogram, new_registry, serve_metrics
from histo.settings import get_settings
from histo.snapshots import SnapshotTaker
from histo.store import open_store
from services.search.server import create_server, serve_until_signalled


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m services.search", description=__doc__)
    parser.add_argument("--host", default=settings.grpc.host, help="address to bind (HISTO_GRPC__HOST)")
    parser.add_argument("--port", type=int, default=settings.grpc.port, help="0 picks a free port")
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.grpc.workers,
        help="threads answering calls (HISTO_GRPC__WORKERS)",
    )
    parser.add_argument("--grace", type=float, default=5.0, help="seconds for calls in flight at shutdown")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="intra-op threads per forward pass (default: torch's choice; 1 avoids oversubscription "
        "when many calls run at once or the cores are busy)",
    )
    parser.add_argument(
        "--allow-stale",
        action="store_true",
        help="search with an encoder even when the index holds vectors another artifact of its name "
        "made (logged as a warning); by default such an encoder is not searched",
    )
    options = parser.parse_args(argv)
    if options.torch_threads:
        import torch

        torch.set_num_threads(options.torch_threads)
    configure_logging(options.log_level, settings.log.format)
    cfg = settings.grpc.model_copy(update={"host": options.host, "port": options.port})
    secrets = [s.get_secret_value() for s in (settings.qdrant.api_key,) if s is not None]
    try:
        store = open_store(
            url=settings.qdrant.url,
            api_key=settings.qdrant.api_key,
            path=settings.index_dir,
            collection=settings.qdrant.collection,
            options=settings.qdrant.index_options(),
        )
    except HistoError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    registry = new_registry()
    registry.register(IndexCollector(store))
    embed_seconds = embed_histogram(registry)
    metrics = settings.metrics
    try:
        # bound before the gRPC port, so that a taken metrics port stops nothing already running
        metrics_port = (
            serve_metrics(
                registry, metrics.host, metrics.search_port, "HISTO_METRICS__SEARCH_PORT"
            ).server_port
            if metrics.search_port
            else 0
        )
        server, _port = create_server(
            cfg,
            lambda: MeteredEngine.from_settings(
                store,
                settings,
                batching=cfg.batching(),
                embed_seconds=embed_seconds,
                stale="warn" if options.allow_stale else "refuse",
            ),
            max_workers=options.workers,
            secrets=secrets,
            registry=registry,
            snapshots=SnapshotTaker(store, settings.encoders_dir, settings.home / "snapshots"),
        )
        server.start()
        store.announce(grpc=reachable(server.address))
        scheme = "TLS" if cfg.tls_cert else "plaintext"
        token = "token required" if cfg.token else "no token"
        print(f"listening on {server.address} ({scheme}, {token}); loading encoders", flush=True)
        if metrics_port:
            print(f"metrics on http://{metrics.host}:{metrics_port}/metrics", flush=True)
        try:
            engine = server.wait_ready()
        except BaseException:
            server.stop(0).wait()
            raise
        names = ", ".join(engine.encoders) or "none (ingest with an encoder first)"
        print(f"serving {store.description} with encoders: {names}", flush=True)
        for name, why in engine.stale.items():
            print(f"warning: not serving {name}: {why}", file=sys.stderr, flush=True)
        serve_until_signalled(server, options.grace)
        engine.close()
        print("stopped", flush=True)
        return 0
    except HistoError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before serving (while loading); once serving it stops gracefully
        print("interrupted; rerun the same command to start again", file=sys.stderr, flush=True)
        return 130
    finally:
        store.close()


def reachable(address: str) -> str:
    """The address a client on this machine dials for a server bound to ``address``
    (a wildcard host becomes the loopback address)."""
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "::", "") else address


if __name__ == "__main__":
    sys.exit(main())
