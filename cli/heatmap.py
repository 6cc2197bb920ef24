"""``histocli heatmap QUERY --slide SLIDE_ID --out map.png``: where in a slide the query matches."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, domain_errors, positive, settings_of
from histo.errors import InvalidInputError


@domain_errors
def heatmap(
    ctx: typer.Context,
    query: Path | None = typer.Argument(None, help="Query image, region or slide file."),
    slide: str = typer.Option(..., "--slide", help="The indexed slide (its slide_id) to draw."),
    point_id: str | None = typer.Option(None, "--id", help="Query with an indexed tile instead of a file."),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        "-e",
        help="Encoder (default: as histocli search chooses it: the first trained encoder, then imagenet, "
        "random, colorhist).",
    ),
    out: Path = typer.Option(Path("heatmap.png"), "--out", "-o", help="PNG to write."),
    size: int = typer.Option(1024, "--size", min=16, max=2048, help="Thumbnail's longer side in pixels."),
    best: int = typer.Option(3, "--best", min=1, max=20, help="Most similar tiles to outline."),
    mpp: float | None = typer.Option(
        None, "--mpp", callback=positive, help="The query's µm/px (above 0), if its file does not record it."
    ),
    server: str | None = typer.Option(None, "--server", help="HOST:PORT of a running histocli serve."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificate (PEM) for a TLS server."),
) -> None:
    """Draw a slide's thumbnail with every indexed tile coloured by its similarity to the query."""
    from cli.search import call_engine, slide_query

    settings = settings_of(ctx)
    if (query is None) == (point_id is None):
        raise InvalidInputError("give a query file or --id POINT_ID (one of them)")
    what = {"point_id": point_id} if point_id is not None else slide_query(settings, query, None, mpp)
    kwargs = {**what, "slide_id": slide, "encoder": encoder, "size": size, "best": best}
    drawn = call_engine(settings, server, tls_ca, "heatmap", kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(drawn.data)
    boxes = ", ".join(f"({b.x},{b.y}) {score:.3f}" for b, score in drawn.best)
    console.print(
        f"wrote {out} ({drawn.width}x{drawn.height}); best tiles of {slide}: {boxes}", highlight=False
    )
