"""``histocli serve [--port P] [--host H]``: run the gRPC search service in the foreground.

This process becomes ``python -m services.search`` (``os.execv``): the very entry point the
container runs, started by module name so that the CLI does not import ``services`` (DESIGN.md
§2). It owns the embedded index while it runs: ``histocli search`` then goes through it with
``--server HOST:PORT``. Ctrl-C or SIGTERM stops it gracefully.
"""

from __future__ import annotations

import typer

from cli.common import become, domain_errors, settings_of

SERVICE_MODULE = "services.search"


@domain_errors
def serve(
    ctx: typer.Context,
    port: int | None = typer.Option(
        None,
        "--port",
        "-p",
        min=0,
        max=65535,
        help="Port to listen on; 0 picks a free one (HISTO_GRPC__PORT).",
    ),
    host: str | None = typer.Option(None, "--host", help="Address to bind (HISTO_GRPC__HOST, 127.0.0.1)."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Threads answering calls (HISTO_GRPC__WORKERS, 64)."
    ),
    grace: float = typer.Option(5.0, "--grace", min=0.0, help="Seconds for calls in flight at shutdown."),
    torch_threads: int | None = typer.Option(
        None, "--torch-threads", min=1, help="Threads per forward pass (default: torch's choice)."
    ),
    allow_stale: bool = typer.Option(
        False,
        "--allow-stale",
        help="Search with an encoder even when the index holds vectors another artifact of its name "
        "made (a warning in the log); by default such an encoder is not served until re-ingested.",
    ),
) -> None:
    """Serve searches over gRPC (health, reflection, token and TLS from HISTO_GRPC__*) until stopped."""
    settings = settings_of(ctx)
    become(
        SERVICE_MODULE,
        [
            "--host",
            host or settings.grpc.host,
            "--port",
            str(settings.grpc.port if port is None else port),
            "--workers",
            str(workers or settings.grpc.workers),
            "--grace",
            str(grace),
            *(["--torch-threads", str(torch_threads)] if torch_threads else []),
            *(["--allow-stale"] if allow_stale else []),
        ],
    )
