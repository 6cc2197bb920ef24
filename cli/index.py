"""``histocli index stats|mosaics|prune|drop``: what the index holds, slide mosaics, removing the
points of vanished files, and removing it all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli import common
from cli.common import console, domain_errors, err_console, open_index, settings_of, table
from histo.settings import Settings

app = common.app(
    "What the index holds (stats), slide mosaics, removing vanished files (prune) or everything "
    "(drop), and backups and moves (snapshot, restore, migrate)."
)


@app.command("stats", short_help="Points per encoder, data set (with layout) and label.")
@domain_errors
def stats(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    server: str | None = typer.Option(
        None, "--server", help="HOST:PORT of the histocli serve that owns the index (ask it instead)."
    ),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificate (PEM) for a TLS server."),
) -> None:
    """Points; vectors per encoder with the artifacts that made them; data sets with their layouts
    and tiles per label."""
    settings = settings_of(ctx)
    if server:
        figures, where = _stats_of_server(settings, server, tls_ca)
    else:
        with open_index(settings) as store:
            figures, where = store.stats(), store.description
    if as_json:
        typer.echo(json.dumps(figures, indent=2, default=str))
        return
    layout = f", vectors quantized {figures['quantization']}" if figures.get("quantization") else ""
    console.print(f"index {where}: {figures.get('points', 0)} points{layout}", highlight=False)
    vectors = table(
        ("encoder", "dim", "points", "made by artifact (digest: points)"), numeric=("dim", "points")
    )
    made = figures.get("artifacts") or {}
    for name, info in sorted(figures.get("vectors", {}).items()):
        stamps = ", ".join(f"{d}: {n}" for d, n in (made.get(name) or {}).items()) or "-"
        vectors.add_row(name, str(info["dim"]), str(info["points"]), stamps)
    console.print(vectors, crop=False)
    layouts = figures.get("layouts") or {}
    labels = table(("dataset", "layout", "label", "points"), numeric=("points",))
    for dataset, per_label in sorted(figures.get("labels", {}).items()):
        kind = ", ".join(layouts.get(dataset) or {}) or "-"
        for label, count in sorted(per_label.items()):
            labels.add_row(dataset, kind, label, str(count))
    console.print(labels, crop=False)


def _stats_of_server(settings: Settings, server: str, tls_ca: Path | None) -> tuple[dict[str, Any], str]:
    """The server's ``GetIndexStats`` in the shape of ``VectorStore.stats`` (it has no layouts
    or artifact digests: those need the index itself)."""
    from histo.client import SearchClient

    with SearchClient(server, token=settings.grpc.token, tls_ca=tls_ca or settings.grpc.tls_cert) as client:
        found = client.stats()
    figures = {
        "collection": found.collection,
        "points": found.points,
        "vectors": found.vectors,
        "datasets": found.datasets,
        "labels": found.labels,
        "searchable_encoders": found.encoders,
    }
    return figures, f"of the search service at {server}"


@app.command("mosaics", short_help="Choose the slides' mosaics (for slide search) anew.")
@domain_errors
def mosaics(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="The data set whose slides to (re)choose."),
    encoder: str = typer.Option(..., "--encoder", "-e", help="The encoder whose vectors choose the mosaics."),
) -> None:
    """Choose every whole-slide image's mosaic (representative tiles for slide search) anew."""
    from histo.query_checks import require_dataset
    from histo.slide_search import build_mosaics, slide_ids_of

    settings = settings_of(ctx)
    with open_index(settings) as store:
        require_dataset(store, dataset)
        chosen = build_mosaics(store, encoder, dataset, slide_ids_of(store, dataset), keep_encoder=False)
    console.print(
        f"{len(chosen)} slides of {dataset}: {sum(chosen.values())} mosaic tiles chosen with {encoder}"
    )


@app.command("prune", short_help="Remove the points of files gone from disk.")
@domain_errors
def prune(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="The data set whose vanished files to remove."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    missing_roots: bool = typer.Option(
        False,
        "--missing-roots",
        help="Also remove files whose whole data set folder is missing (deleted, not just unmounted).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Remove the points of files of a data set that no longer exist on disk (listed first)."""
    from histo.sync import plan_prune, remove_files, report_lines, write_removals

    settings = settings_of(ctx)
    gone_file = settings.logs_dir / f"gone-{dataset}.tsv"
    with open_index(settings) as store:
        plan = plan_prune(store, dataset, missing_roots)
        lines = [
            f"{dataset}: {plan.files} files indexed, {len(plan.gone)} gone from disk "
            f"({plan.gone_points} points)" + ("; dry run, nothing removed" if dry_run else ""),
            *report_lines(plan.gone),
            *(
                f"  kept {files} files under {root}: that folder is missing (unmounted?); "
                "--missing-roots removes them"
                for root, files in plan.unreachable.items()
            ),
        ]
        if plan.gone:
            write_removals(gone_file, plan.gone)
            lines.append(f"gone files listed in {gone_file}")
        say = err_console.print if as_json else console.print  # the report comes first, always
        for line in lines:
            say(line, highlight=False, soft_wrap=True)
        removed = 0 if dry_run else remove_files(store, plan.gone)
    if as_json:
        figures = {
            "dataset": dataset,
            "files": plan.files,
            "gone": [f.rel_path for f in plan.gone],
            "gone_points": plan.gone_points,
            "removed": removed,
            "dry_run": dry_run,
            "unreachable_roots": plan.unreachable,
        }
        typer.echo(json.dumps(figures, indent=2))
    elif not dry_run:
        console.print(f"removed {removed} points of {len(plan.gone)} files", highlight=False)


@app.command("drop", short_help="Delete the whole index (asks first).")
@domain_errors
def drop(ctx: typer.Context, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> None:
    """Delete every point and vector of the index (asks first)."""
    settings = settings_of(ctx)
    with open_index(settings) as store:
        where = store.description
        if not yes and not typer.confirm(f"Drop the whole index at {where}?", default=False):
            console.print("kept the index")
            raise typer.Exit(1)
        store.drop()
    console.print(f"dropped the index at {where}")
