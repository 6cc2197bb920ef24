"""``histocli ingest DIR --dataset NAME``: every tile, embedded by every encoder, in the index, once.

``--sync`` also brings the data set's points in step with its files (``histo.sync``): changed
files are re-embedded, and the points of files that are gone are listed, then removed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.common import (
    MIN_TISSUE,
    STRIDE,
    TARGET_MPP,
    TILE_SIZE,
    console,
    domain_errors,
    err_console,
    open_index,
    settings_of,
    tiling_config,
)
from histo.errors import InvalidInputError

if TYPE_CHECKING:
    from histo.sync import SyncPlan, SyncResult


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
    sync: bool = typer.Option(
        False,
        "--sync",
        help="Also re-embed changed files and remove the points of files gone from DIR (listed first).",
    ),
) -> None:
    """Tile, embed with every encoder and upsert into the index; reruns resume, failures never stop it."""
    if sync and (queue or attach is not None):
        raise InvalidInputError(
            "--sync runs in this process; drop --queue (or ingest with --queue, then run "
            "`histocli index prune -d DATASET` for the files that are gone)"
        )
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
    from histo.sync import plan_sync, settle

    settings = settings_of(ctx)
    config = tiling_config(settings, tile_size, stride, target_mpp, min_tissue)
    scan = scan_dataset(root, dataset).with_mpp(mpp)
    embedders = {
        n: Embedder.from_artifact(p) for n, p in resolve_encoders(encoders, settings.encoders_dir).items()
    }
    failures_file = settings.logs_dir / f"ingest-{dataset}-failures.tsv"
    with open_index(settings) as store:
        ingestor = Ingestor(store, embedders, batch_size)
        plan = plan_sync(store, scan.dataset, scan.root, scan.records, not as_json) if sync else None
        if plan is not None:
            say_plan(plan, settings.logs_dir / f"gone-{dataset}.tsv", as_json)
        summary = run_ingest(
            plan.records if plan is not None else scan.records,
            ingestor,
            config,
            settings.images.max_pixels,
            num_workers=workers,
            progress=not as_json,
        )
        result = settle(store, plan, (p.path for p in summary.failed)) if plan is not None else None
    summary.failed[:0] = scan.problems
    write_failures(failures_file, summary.failed)
    if as_json:
        figures: dict[str, Any] = summary.as_dict()
        if plan is not None and result is not None:
            figures["sync"] = sync_figures(plan, result)
        typer.echo(json.dumps(figures, indent=2))
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
    if result is not None:
        say_result(result)


def say_plan(plan: SyncPlan, gone_file: Path, as_json: bool) -> None:
    """The sync's plan, before anything is removed; the full list of gone files to ``gone_file``."""
    from histo.sync import report_lines, write_removals

    say = err_console.print if as_json else console.print
    say(
        f"sync {plan.dataset} from {plan.root}: {plan.count('unchanged')} files unchanged, "
        f"{plan.count('touched')} touched (same bytes: restamped), {plan.count('changed')} changed "
        f"(re-embedded), {plan.count('new')} new, {plan.count('unstamped')} indexed before file "
        f"stamps (stamped, vectors kept); {len(plan.gone)} gone: {plan.gone_points} points to remove",
        highlight=False,
        soft_wrap=True,
    )
    for line in report_lines(plan.gone):
        say(line, highlight=False, soft_wrap=True)
    if plan.gone:
        write_removals(gone_file, plan.gone)
        say(f"gone files listed in {gone_file}", highlight=False)
    if plan.elsewhere:
        say(
            f"{plan.elsewhere} files of {plan.dataset} were indexed from other folders and are left "
            f"alone (histocli index prune -d {plan.dataset} removes those gone from disk)",
            highlight=False,
            soft_wrap=True,
        )


def say_result(result: SyncResult) -> None:
    console.print(
        f"sync: removed {result.gone_removed} points of gone files and {result.stale_removed} stale "
        "points of changed files",
        highlight=False,
    )
    for path in result.kept_failed:
        console.print(f"  kept the old points of {path}: it changed but could not be read", highlight=False)


def sync_figures(plan: SyncPlan, result: SyncResult) -> dict[str, Any]:
    """The ``sync`` part of ``--json``: files per state, gone files and points removed."""
    from histo.sync import STATES

    return {
        "files": {state: plan.count(state) for state in STATES},
        "gone": [f.rel_path for f in plan.gone],
        "gone_removed": result.gone_removed,
        "stale_removed": result.stale_removed,
        "restamped_leftovers": result.restamped_leftovers,
        "kept_failed": result.kept_failed,
        "elsewhere": plan.elsewhere,
    }
