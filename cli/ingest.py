"""``histocli ingest DIR --layout LAYOUT [--name NAME]``: every tile, embedded by every encoder, in
the index, once; each vector stamped with the digest of the artifact that made it.

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
    Target,
    console,
    domain_errors,
    err_console,
    open_index,
    pick_layout,
    positive,
    settings_of,
    tiling_config,
)
from histo.data.tiling import TilingConfig
from histo.errors import InvalidInputError
from histo.settings import Settings

if TYPE_CHECKING:
    from histo.ingest import IngestSummary
    from histo.store import VectorStore
    from histo.sync import SyncPlan, SyncResult


@domain_errors
def ingest(
    ctx: typer.Context,
    root: Path | None = typer.Argument(None, help="The data set folder, as downloaded."),
    layout: str | None = typer.Option(
        None,
        "--layout",
        help="How the folder is laid out: bracs, bach, crc, folder (class folders) or slides.",
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="The data set's name in the index, for filters, evaluation, sync and prune (default: the "
        "layout's name; for --layout folder, the folder's own name).",
    ),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="The old spelling of --layout."),
    encoders: str = typer.Option(
        "all", "--encoders", "-e", help="all, or a comma list such as nnclr,colorhist."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Tiles embedded per forward pass."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Decoding processes (default: cores - 1, at most 8; none on 2 cores or fewer).",
    ),
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
        None, "--mpp", callback=positive, help="µm/px of images and slides whose files do not record it."
    ),
    sync: bool = typer.Option(
        False,
        "--sync",
        help="Also re-embed changed files and remove the points of files gone from DIR (listed first).",
    ),
    no_reembed: bool = typer.Option(
        False,
        "--no-reembed",
        help="Refuse, instead of re-embedding, when an encoder's vectors of this data set were made by "
        "another artifact of its name (it was retrained since).",
    ),
    input_size: int | None = typer.Option(
        None,
        "--input-size",
        min=32,
        help="Pixels the baselines (imagenet, random, colorhist) see, remade if need be; default: the "
        "input size of the trained encoders ingested with them, so their rows compare like for like.",
    ),
) -> None:
    """Tile, embed with every encoder and upsert into the index; reruns resume, failures never stop it.

    A tile already indexed is skipped, unless its file changed or an encoder's artifact changed
    since (its vector is then embedded anew).
    """
    if sync and (queue or attach is not None):
        raise InvalidInputError(
            "--sync runs in this process; drop --queue (or ingest with --queue, then run "
            "`histocli index prune -d DATASET` for the files that are gone)"
        )
    settings = settings_of(ctx)
    config = tiling_config(settings, tile_size, stride, target_mpp, min_tissue)
    if attach is not None:
        if root is not None or layout or dataset or name:
            raise InvalidInputError("--attach follows an existing job; give it alone, without a folder")
        from cli import ingest_queue

        return ingest_queue.attach(settings, attach, as_json)
    if root is None:
        raise InvalidInputError("give the data set folder: histocli ingest DIR --layout LAYOUT [--name NAME]")
    from histo.data.datasets import check_dataset_name, default_dataset_name
    from histo.encoders.catalog import resolve_encoders, size_mismatch

    chosen = pick_layout(layout, dataset)
    dataset_name = check_dataset_name(name) if name is not None else default_dataset_name(chosen, root)
    folders = resolve_encoders(encoders, settings.encoders_dir, input_size)  # unknown names fail first
    warning = size_mismatch(folders)
    if warning:
        console.print(warning, highlight=False)
    target = Target(root, chosen, dataset_name)
    if queue:
        from cli import ingest_queue

        return ingest_queue.run(settings, target, folders, config, batch_size, as_json, mpp, no_reembed)
    run_here(settings, target, folders, config, batch_size, workers, as_json, mpp, sync, no_reembed)


def run_here(
    settings: Settings,
    target: Target,
    folders: dict[str, Path],
    config: TilingConfig,
    batch_size: int,
    workers: int | None,
    as_json: bool,
    mpp: float | None,
    sync: bool,
    no_reembed: bool,
) -> None:
    """The in-process ingestion: scan, embed, upsert, then say what happened."""
    from histo.embedding import Embedder
    from histo.ingest import Ingestor, write_failures
    from histo.ingest import ingest as run_ingest
    from histo.provenance import refuse_stale
    from histo.sync import plan_sync, settle

    scan = target.scan(mpp)
    dataset, layout = target.name, target.layout
    embedders = {n: Embedder.from_artifact(p) for n, p in folders.items()}
    failures_file = settings.logs_dir / f"ingest-{dataset}-failures.tsv"
    with open_index(settings) as store:
        say = err_console.print if as_json else console.print
        for line in joining_notes(store, dataset, layout, scan.root, [r.rel_path for r in scan.records]):
            say(f"[yellow]note:[/yellow] {line}", highlight=False, soft_wrap=True)
        if no_reembed:
            refuse_stale(store, {n: e.digest for n, e in embedders.items()}, dataset)
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
        elsewhere = stale_elsewhere(store, embedders, dataset)
    summary.failed[:0] = scan.problems
    write_failures(failures_file, summary.failed)
    if as_json:
        figures: dict[str, Any] = summary.as_dict()
        if plan is not None and result is not None:
            figures["sync"] = sync_figures(plan, result)
        figures["stale_elsewhere"] = elsewhere
        typer.echo(json.dumps(figures, indent=2))
        return
    say_summary(summary, list(embedders), failures_file)
    if result is not None:
        say_result(result)
    for line in elsewhere:
        console.print(f"[yellow]note:[/yellow] {line}", highlight=False, soft_wrap=True)


def say_summary(summary: IngestSummary, names: list[str], failures_file: Path) -> None:
    again = (
        f" ({summary.reembedded} of them again: an encoder's artifact changed since they were indexed)"
        if summary.reembedded
        else ""
    )
    console.print(
        f"{summary.dataset}: {summary.images} images, {summary.tiles} tiles: {summary.embedded} embedded"
        f"{again}, {summary.skipped} skipped (already indexed by these artifacts), {len(summary.failed)} "
        f"failed; {summary.embedded_per_second:.1f} tiles embedded/s with {', '.join(names)}",
        highlight=False,
        soft_wrap=True,
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


def joining_notes(
    store: VectorStore, dataset: str, layout: str, root: Path, rel_paths: list[str]
) -> list[str]:
    """What to know before adding files to ``dataset``: it already holds files of other folders,
    or was read as another layout (tiles then share one name in filters and evaluation). A file
    whose relative path is already indexed from another folder that still exists is refused: both
    would map to the same point ids and replace each other's tiles (a folder that is gone from
    disk has moved, and its tiles are this folder's)."""
    from histo.store import SearchFilter

    if dataset not in store.count_values("dataset"):
        return []
    notes = []
    roots = {r: n for r, n in store.count_values("root", SearchFilter(dataset)).items() if r != str(root)}
    present = {r for r in roots if Path(r).is_dir()}
    if present:
        wanted = set(rel_paths)
        taken = {
            (str(rec.payload.get("root")), str(rec.payload.get("path")))
            for rec in store.scroll(SearchFilter(dataset))
            if rec.payload.get("root") in present and rec.payload.get("path") in wanted
        }
        if taken:
            other, example = sorted(taken)[0]
            raise InvalidInputError(
                f"{len({p for _, p in taken})} files of {root} have the same paths as files of {other} in "
                f"data set {dataset} (e.g. {example}): their tiles would replace each other; give this "
                "folder its own --name"
            )
    if roots:
        shown = ", ".join(f"{r} ({n} tiles)" for r, n in roots.items())
        notes.append(
            f"data set {dataset} already holds tiles of {shown}; the files of {root} join them. "
            "To keep them apart, give this folder its own --name"
        )
    layouts = {name for name in store.count_values("layout", SearchFilter(dataset)) if name != layout}
    if layouts:
        notes.append(
            f"data set {dataset} was ingested as layout {', '.join(sorted(layouts))}, now as {layout}"
        )
    return notes


def stale_elsewhere(store: VectorStore, embedders: dict[str, Any], dataset: str) -> list[str]:
    """One line per other data set whose vectors of these encoders another artifact made, with
    the command that re-embeds them (searches with those encoders are refused until then)."""
    from histo.provenance import ingest_command, provenance, stale_datasets

    lines = []
    for name, embedder in embedders.items():
        stale = stale_datasets(store, provenance(store, name, embedder.digest))
        for other, count in stale.items():
            if other != dataset:
                lines.append(
                    f"{count} {name} vectors of data set {other} come from an earlier {name} artifact; "
                    f"searches with {name} are refused until they are re-embedded: "
                    f"{ingest_command(store, other, name)}"
                )
    return lines


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
