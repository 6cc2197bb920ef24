"""``histocli search IMAGE | --id ID``: the indexed tiles most like a query image or tile.

Without ``--server`` the embedded index is searched in this process (it must not be owned by a
running ``histocli serve``; then search through that server). With ``--server HOST:PORT`` the
query goes to a search service over gRPC, with the token of HISTO_GRPC__TOKEN and, for TLS, the CA
of ``--tls-ca`` (default: HISTO_GRPC__TLS_CERT, right for a self-signed certificate).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, domain_errors, open_index, settings_of
from histo.errors import ImageDecodeError, InvalidInputError, StoreLockedError
from histo.search import SearchResult
from histo.settings import Settings
from histo.store import SearchFilter


@domain_errors
def search(
    ctx: typer.Context,
    image: Path | None = typer.Argument(
        None, help="Query image (PNG, JPEG, TIFF); one larger than a tile is tiled and its results combined."
    ),
    point_id: str | None = typer.Option(None, "--id", help="Query with an indexed tile (its point id)."),
    encoder: str | None = typer.Option(
        None, "--encoder", "-e", help="Encoder to search with (default: the best available)."
    ),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Only tiles of this data set."),
    labels: list[str] | None = typer.Option(
        None, "--label", "-l", help="Only tiles with this label; repeat for any of several."
    ),
    split: str | None = typer.Option(None, "--split", help="Only tiles of this split (train, val, test)."),
    exclude_images: list[str] | None = typer.Option(None, "--exclude-image", help="Drop an image's tiles."),
    exclude_slides: list[str] | None = typer.Option(None, "--exclude-slide", help="Drop a slide's tiles."),
    top_k: int = typer.Option(10, "-k", "--top-k", min=1, max=1000, help="How many hits."),
    per_image: int | None = typer.Option(None, "--per-image", min=1, help="At most N hits per image."),
    same_image: bool = typer.Option(
        False, "--same-image", help="With --id: also return other tiles of the query's own image."
    ),
    exact: bool = typer.Option(False, "--exact", help="Exhaustive search instead of the HNSW index."),
    server: str | None = typer.Option(
        None, "--server", help="HOST:PORT of a running histocli serve (default: search in-process)."
    ),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificate (PEM) for a TLS server."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Rank indexed tiles by similarity to an image or an indexed tile, filtered by data set and label."""
    settings = settings_of(ctx)
    if (image is None) == (point_id is None):
        raise InvalidInputError("give a query image or --id POINT_ID (one of them)")
    query: dict[str, object] = {"point_id": point_id} if point_id is not None else {"image": _read(image)}
    options: dict[str, object] = {
        "encoder": encoder,
        "top_k": top_k,
        "filter": SearchFilter(
            dataset=dataset,
            labels=tuple(labels or ()),
            split=split,
            exclude_image_ids=tuple(exclude_images or ()),
            exclude_slide_ids=tuple(exclude_slides or ()),
        ),
        "per_image": per_image,
        "include_same_image": same_image,
        "exact": exact,
    }
    try:
        if server:
            result = _remote(settings, server, tls_ca, {**query, **options})
        else:
            result = _in_process(settings, {**query, **options})
    except ImageDecodeError as exc:  # name the file instead of "uploaded image"
        raise type(exc)(str(exc).replace("uploaded image", str(image), 1)) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    _print(result, f"{image}" if image is not None else f"tile {point_id}")


def _read(image: Path | None) -> bytes:
    assert image is not None
    if not image.is_file():
        raise InvalidInputError(f"{image}: no such image file")
    return image.read_bytes()


def _remote(settings: Settings, server: str, tls_ca: Path | None, kwargs: dict[str, object]) -> SearchResult:
    from histo.client import SearchClient

    ca = tls_ca or settings.grpc.tls_cert
    with SearchClient(server, token=settings.grpc.token, tls_ca=ca) as client:
        return client.search(**kwargs)  # type: ignore[arg-type]


def _in_process(settings: Settings, kwargs: dict[str, object]) -> SearchResult:
    from histo.search import SearchEngine, default_encoder, searchable_artifacts

    try:
        store = open_index(settings)
    except StoreLockedError as exc:
        raise StoreLockedError(_locked(settings, exc)) from None
    with store:
        name = kwargs.get("encoder")
        if not name:  # load just the default encoder, not every one
            available = searchable_artifacts(store, settings.encoders_dir)
            name = default_encoder({n: meta for n, (_, meta) in available.items()})
        engine = SearchEngine.from_settings(store, settings, [str(name)] if name else [], warm_up=False)
        return engine.search(**kwargs)  # type: ignore[arg-type]


def _locked(settings: Settings, exc: StoreLockedError) -> str:
    """One line: who owns the index and how to search anyway (through the server)."""
    from histo.store.edge import LOCK_NAME, OwnerLock

    owner = OwnerLock(settings.index_dir / LOCK_NAME, "").owner()
    command = str(owner.get("command", ""))
    address = f"{settings.grpc.host}:{settings.grpc.port}"
    if "services/search" in command or "services.search" in command or " serve" in command:
        return (
            f"the index at {settings.index_dir} is owned by a running search server "
            f"(pid {owner.get('pid', '?')}); search through it: add --server HOST:PORT "
            f"(the address it printed; by default {address})"
        )
    return f"{exc}; if that is a search server, add --server HOST:PORT (by default {address})"


def _print(result: SearchResult, query: str) -> None:
    tiles = f", query cut into {len(result.query_boxes)} tiles" if len(result.query_boxes) > 1 else ""
    console.print(
        f"{len(result.hits)} hits for {query} with {result.encoder} in {result.took_ms:.1f} ms{tiles}",
        highlight=False,
    )
    table = Table()
    for column in ("#", "score", "dataset", "label", "image", "box (x,y wxh)"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    if len(result.query_boxes) > 1:
        table.add_column("query tile")
    for rank, hit in enumerate(result.hits, start=1):
        p = hit.payload
        box = f"{p.get('x', '-')},{p.get('y', '-')} {p.get('w', '-')}x{p.get('h', '-')}"
        row = [
            str(rank),
            f"{hit.score:.4f}",
            str(p.get("dataset", "-")),
            str(p.get("label", "-")),
            str(p.get("image_id", "-")),
            box,
        ]
        if len(result.query_boxes) > 1 and hit.query_tile is not None:
            q = result.query_boxes[hit.query_tile]
            row.append(f"{q.x},{q.y} {q.w}x{q.h}")
        table.add_row(*row)
    console.print(table)
