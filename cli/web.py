"""``histocli web [--port 8080] [--server HOST:PORT]``: the search page in a browser.

This process becomes ``python -m services.web`` (``os.execv``), the entry point the container
runs, started by module name so that the CLI does not import ``services`` (DESIGN.md §2). Without
``--server`` it owns the embedded index while it runs (stop ``histocli serve`` first, or give
``--server`` to search through it). Ctrl-C stops it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import become, domain_errors, settings_of

WEB_MODULE = "services.web"


@domain_errors
def web(
    ctx: typer.Context,
    port: int | None = typer.Option(
        None, "--port", "-p", min=0, max=65535, help="Port of the page; 0 picks a free one (HISTO_WEB__PORT)."
    ),
    host: str | None = typer.Option(None, "--host", help="Address to bind (HISTO_WEB__HOST, 127.0.0.1)."),
    server: str | None = typer.Option(
        None, "--server", help="HOST:PORT of a running histocli serve (default: search in-process)."
    ),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificate (PEM) for a TLS server."),
    allow_stale: bool = typer.Option(
        False,
        "--allow-stale",
        help="In-process: search with an encoder even when the index holds vectors another artifact "
        "of its name made (by default such an encoder is not offered until re-ingested).",
    ),
) -> None:
    """Serve the search page and its JSON API (/api) until stopped: upload a patch, see similar tissue."""
    settings = settings_of(ctx)
    become(
        WEB_MODULE,
        [
            "--host",
            host or settings.web.host,
            "--port",
            str(settings.web.port if port is None else port),
            *(["--server", server] if server else []),
            *(["--tls-ca", str(tls_ca)] if tls_ca else []),
            *(["--allow-stale"] if allow_stale else []),
        ],
    )
