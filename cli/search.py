"""``histocli search IMAGE | --id ID``: the indexed tiles most like a query image or tile.

Without ``--server`` the embedded index is searched in this process (it must not be owned by a
running ``histocli serve``; then search through that server). With ``--server HOST:PORT`` the
query goes to a search service over gRPC, with the token of HISTO_GRPC__TOKEN and, for TLS, the CA
of ``--tls-ca`` (default: HISTO_GRPC__TLS_CERT, right for a self-signed certificate).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from cli.common import (
    Fusion,
    console,
    domain_errors,
    open_index,
    positive,
    settings_of,
    table,
    tiling_config,
)
from histo.errors import ImageDecodeError, InvalidInputError
from histo.search import Feedback, SearchEngine, SearchResult
from histo.settings import Settings
from histo.slide_search import SlideSearchResult
from histo.store import SearchFilter, VectorStore
from histo.store.base import DEFAULT_STRATEGY


class Strategy(StrEnum):
    best_score = "best_score"
    sum_scores = "sum_scores"
    average_vector = "average_vector"


@domain_errors
def search(
    ctx: typer.Context,
    image: Path | None = typer.Argument(
        None, help="Query image (PNG, JPEG, TIFF); one larger than a tile is tiled and its results combined."
    ),
    point_id: str | None = typer.Option(None, "--id", help="Query with an indexed tile (its point id)."),
    encoder: list[str] | None = typer.Option(
        None,
        "--encoder",
        "-e",
        help="Encoder to search with; repeat to fuse several. Default: the first, among those with "
        "vectors for the filtered tiles, of the trained encoders (by name), then imagenet, random, "
        "colorhist (which retrieves best on your data: histocli evaluate).",
    ),
    fusion: Fusion = typer.Option(Fusion.rrf, "--fusion", help="How several encoders' lists are fused."),
    like: list[str] | None = typer.Option(
        None, "--like", help="More like this indexed tile (point id); repeat. May replace the query."
    ),
    unlike: list[str] | None = typer.Option(None, "--unlike", help="Less like this tile (point id); repeat."),
    like_images: list[Path] | None = typer.Option(None, "--like-image", help="More like this image file."),
    unlike_images: list[Path] | None = typer.Option(
        None, "--unlike-image", help="Less like this image file."
    ),
    strategy: Strategy = typer.Option(
        Strategy(DEFAULT_STRATEGY), "--strategy", help="How like / unlike examples are combined."
    ),
    diverse: float | None = typer.Option(
        None,
        "--diverse",
        min=0.0,
        max=1.0,
        metavar="DIVERSITY",
        help="MMR re-ranking: 0 = plain ranking, 1 = most diverse (MMR's lambda = 1 - DIVERSITY).",
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
    slides: bool = typer.Option(
        False,
        "--slides",
        help="Rank whole slides (by their mosaics) instead of tiles; QUERY may be a slide file.",
    ),
    slide_id: str | None = typer.Option(
        None, "--slide-id", help="With --slides: query with an indexed slide."
    ),
    tiles_per_slide: int = typer.Option(
        3, "--tiles-per-slide", min=1, max=20, help="Best tiles listed per slide."
    ),
    mpp: float | None = typer.Option(
        None,
        "--mpp",
        callback=positive,
        help="The query's µm/px (above 0), if its file does not record it.",
    ),
    allow_stale: bool = typer.Option(
        False,
        "--allow-stale",
        help="Search even when the index holds vectors another artifact of the encoder's name made "
        "(it was retrained since they were indexed); by default that is refused.",
    ),
) -> None:
    """Rank indexed tiles (or, with --slides, whole slides) by similarity to an image, an indexed tile
    or slide, filtered by data set and label."""
    settings = settings_of(ctx)
    names = list(dict.fromkeys(encoder or ()))
    if slides or slide_id is not None:
        if len(names) > 1:
            raise InvalidInputError("slide search takes one --encoder; fusion is for tile search")
        options = {
            **slide_query(settings, image, slide_id, mpp),
            "encoder": names[0] if names else None,
            "top_k": top_k,
            "filter": SearchFilter(dataset=dataset, labels=tuple(labels or ()), split=split),
            "tiles_per_slide": tiles_per_slide,
        }
        found = call_engine(settings, server, tls_ca, "search_slides", options, allow_stale)
        if as_json:
            typer.echo(json.dumps(found.as_dict(), indent=2))
        else:
            _print_slides(found, str(image) if image is not None else f"slide {slide_id}")
        return
    feedback = Feedback(
        like=tuple(like or ()),
        unlike=tuple(unlike or ()),
        like_images=tuple(_read(p) for p in like_images or ()),
        unlike_images=tuple(_read(p) for p in unlike_images or ()),
        strategy=strategy.value,
    )
    if image is not None and point_id is not None:
        raise InvalidInputError("give a query image or --id POINT_ID, not both")
    if image is None and point_id is None and not feedback.has_positives:
        raise InvalidInputError("give a query image or --id POINT_ID, or liked tiles (--like POINT_ID)")
    query: dict[str, object] = {}
    if point_id is not None:
        query["point_id"] = point_id
    elif image is not None:
        query["image"] = _read(image)
    options = {
        "encoder": names[0] if len(names) == 1 else None,
        "encoders": names if len(names) > 1 else None,
        "fusion": fusion.value,
        "feedback": feedback if feedback.examples else None,
        "diversity": diverse,
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
        result = call_engine(settings, server, tls_ca, "search", {**query, **options}, allow_stale)
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


def slide_query(
    settings: Settings, image: Path | None, slide_id: str | None, mpp: float | None
) -> dict[str, object]:
    """An indexed slide's id, or the query file's bytes (a slide file: a montage of its tissue)."""
    if (image is None) == (slide_id is None):
        raise InvalidInputError(
            "with --slides give a query (an image, region or slide file) or --slide-id ID"
        )
    if slide_id is not None:
        return {"slide_id": slide_id}
    from histo.data.slides import is_slide, slide_montage

    assert image is not None
    if is_slide(image):
        return {"image": slide_montage(image, tiling_config(settings), mpp)}
    return {"image": _read(image), "mpp": mpp}


def call_engine(
    settings: Settings,
    server: str | None,
    tls_ca: Path | None,
    method: str,
    kwargs: dict[str, object],
    allow_stale: bool = False,
) -> Any:
    """``method`` of a SearchClient of ``server``, or of an in-process engine."""
    if server:
        from histo.client import SearchClient

        ca = tls_ca or settings.grpc.tls_cert
        with SearchClient(server, token=settings.grpc.token, tls_ca=ca) as client:
            return getattr(client, method)(**kwargs)
    with open_index(settings) as store:
        engine = in_process_engine(settings, store, kwargs, allow_stale)
        return getattr(engine, method)(**kwargs)


def in_process_engine(
    settings: Settings, store: VectorStore, kwargs: dict[str, object], allow_stale: bool
) -> SearchEngine:
    """An engine with just the encoders a query needs: those it names, else the one the engine
    would choose by default for its filter (loading every encoder would take seconds)."""
    from histo.encoder_choice import first_with_vectors, preference_order
    from histo.encoders.artifact import artifact_digest
    from histo.provenance import provenance
    from histo.search import searchable_artifacts

    names = [str(n) for n in list(kwargs.get("encoders") or ()) or [kwargs.get("encoder")] if n]  # type: ignore[call-overload]
    if not names:
        available = searchable_artifacts(store, settings.encoders_dir)
        fresh = {
            name: meta
            for name, (folder, meta) in available.items()
            if allow_stale or not provenance(store, name, artifact_digest(folder)).stale
        }
        flt = kwargs.get("filter")
        chosen = first_with_vectors(
            store, preference_order(fresh), flt if isinstance(flt, SearchFilter) else None
        )
        names = [chosen] if chosen else list(available)  # none fresh: the engine says why
    stale = "warn" if allow_stale else "refuse"
    return SearchEngine.from_settings(store, settings, names, warm_up=False, stale=stale)


def _print_slides(result: SlideSearchResult, query: str) -> None:
    console.print(
        f"{len(result.slides)} slides for {query} with {result.encoder} in {result.took_ms:.1f} ms "
        "(score: median over query tiles of each slide's best mosaic match)",
        highlight=False,
        soft_wrap=True,
    )
    if result.query_image is not None:
        console.print(f"query: {result.query_image.sentence()}", highlight=False, soft_wrap=True)
    shown = table(
        ("#", "score", "slide", "dataset", "label", "patient", "best tiles (x,y)"), numeric=("#", "score")
    )
    for rank, slide in enumerate(result.slides, start=1):
        tiles = " ".join(f"{t.payload.get('x')},{t.payload.get('y')}" for t in slide.tiles)
        shown.add_row(
            str(rank),
            f"{slide.score:.4f}",
            slide.slide_id,
            str(slide.dataset or "-"),
            str(slide.label or "-"),
            str(slide.patient_id or "-"),
            tiles,
        )
    console.print(shown, crop=False)


def _print(result: SearchResult, query: str) -> None:
    fused = f" fused by {result.fusion}" if result.fusion else ""
    console.print(
        f"{len(result.hits)} hits for {query} with {result.encoder}{fused} in {result.took_ms:.1f} ms",
        highlight=False,
        soft_wrap=True,
    )
    if result.query_image is not None:
        console.print(f"query: {result.query_image.sentence()}", highlight=False, soft_wrap=True)
    columns = ["#", "score", "dataset", "label", "image", "box (x,y wxh)", "id (for --id, --like)"]
    columns += ["found by"] * bool(result.fusion) + ["query tile"] * (len(result.query_boxes) > 1)
    # rich squeezes a table to the terminal's width; ids must print whole to go into --like
    shown = table(columns, numeric=("#", "score"), whole={"id (for --id, --like)": 36, "score": 6})
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
            hit.id,
        ]
        if result.fusion:
            row.append(", ".join(hit.found_by))
        if len(result.query_boxes) > 1 and hit.query_tile is not None:
            q = result.query_boxes[hit.query_tile]
            row.append(f"{q.x},{q.y} {q.w}x{q.h}")
        shown.add_row(*row)
    console.print(shown, crop=False)
