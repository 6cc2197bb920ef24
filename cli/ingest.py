"""``histocli ingest DIR --dataset NAME``: every tile, embedded by every encoder, in the index, once."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.common import (
    MIN_TISSUE,
    STRIDE,
    TARGET_MPP,
    TILE_SIZE,
    console,
    domain_errors,
    open_index,
    settings_of,
    tiling_config,
)
from histo.errors import InvalidInputError


@domain_errors
def ingest(
    ctx: typer.Context,
    root: Path | None = typer.Argument(None, help="The data set folder, as downloaded."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="bracs, bach, crc or folder."),
    encoders: str = typer.Option(
        "all", "--encoders", "-e", help="all, or a comma list such as nnclr,colorhist."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Tiles embedded per forward pass."),
    workers: int | None = typer.Option(None, "--workers", help="Decoding processes (default: cores - 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    tile_size: int | None = TILE_SIZE,
    stride: int | None = STRIDE,
    target_mpp: float | None = TARGET_MPP,
    min_tissue: float | None = MIN_TISSUE,
    queue: bool = typer.Option(
        False, "--queue", help="Send batches of --batch-size tiles to Celery workers over Redis."
    ),
    attach: str | None = typer.Option(None, "--attach", metavar="JOB_ID", help="Follow a queued job again."),
    mpp: float | None = typer.Option(
        None, "--mpp", min=0.01, help="µm/px of images and slides whose files do not record it."
    ),
) -> None:
    """Tile, embed with every encoder and upsert into the index; reruns resume, failures never stop it."""
    if queue or attach is not None:
        from cli import ingest_queue

        settings = settings_of(ctx)
        config = tiling_config(settings, tile_size, stride, target_mpp, min_tissue)
        return ingest_queue.run(settings, root, dataset, encoders, config, batch_size, attach, as_json, mpp)
    if root is None or dataset is None:
        raise InvalidInputError("give the data set folder and --dataset NAME")
    from histo.data.datasets import scan_dataset
    from histo.embedding import Embedder
    from histo.encoders.catalog import resolve_encoders
    from histo.ingest import Ingestor, write_failures
    from histo.ingest import ingest as run_ingest

    settings = settings_of(ctx)
    config = tiling_config(settings, tile_size, stride, target_mpp, min_tissue)
    scan = scan_dataset(root, dataset).with_mpp(mpp)
    embedders = {
        n: Embedder.from_artifact(p) for n, p in resolve_encoders(encoders, settings.encoders_dir).items()
    }
    failures_file = settings.logs_dir / f"ingest-{dataset}-failures.tsv"
    with open_index(settings) as store:
        summary = run_ingest(
            scan.records,
            Ingestor(store, embedders, batch_size),
            config,
            settings.images.max_pixels,
            num_workers=workers,
            progress=not as_json,
        )
    summary.failed[:0] = scan.problems
    write_failures(failures_file, summary.failed)
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
        return
    console.print(
        f"{summary.images} images, {summary.tiles} tiles: {summary.embedded} embedded, "
        f"{summary.skipped} skipped (already indexed), {len(summary.failed)} failed; "
        f"{summary.embedded_per_second:.1f} tiles embedded/s "
        f"with {', '.join(embedders)}"
    )
    if summary.mosaics:
        console.print(
            f"{len(summary.mosaics)} whole-slide images: {sum(summary.mosaics.values())} mosaic tiles for "
            "slide search (histocli search QUERY --slides)"
        )
    for problem in summary.failed:
        console.print(f"  failed: {problem.path}: {problem.reason}", highlight=False, soft_wrap=True)
    if summary.failed:
        console.print(f"failures written to {failures_file}")
