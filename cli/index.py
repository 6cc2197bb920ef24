"""``histocli index stats|mosaics|drop``: what the index holds, slide mosaics, and removing it."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from cli.common import console, domain_errors, open_index, settings_of

app = typer.Typer(help="Inspect or drop the vector index.", no_args_is_help=True)


@app.command("stats")
@domain_errors
def stats(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Points, vectors per encoder, and points per data set and label."""
    settings = settings_of(ctx)
    with open_index(settings) as store:
        figures = store.stats()
        where = store.description
    if as_json:
        typer.echo(json.dumps(figures, indent=2, default=str))
        return
    console.print(f"index {where}: {figures.get('points', 0)} points")
    vectors = Table(title="vectors per encoder")
    for column in ("encoder", "dim", "points"):
        vectors.add_column(column, justify="left" if column == "encoder" else "right")
    for name, info in sorted(figures.get("vectors", {}).items()):
        vectors.add_row(name, str(info["dim"]), str(info["points"]))
    console.print(vectors)
    labels = Table(title="points per data set and label")
    for column in ("dataset", "label", "points"):
        labels.add_column(column)
    for dataset, per_label in sorted(figures.get("labels", {}).items()):
        for label, count in sorted(per_label.items()):
            labels.add_row(dataset, label, str(count))
    console.print(labels)


@app.command("mosaics")
@domain_errors
def mosaics(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="The data set whose slides to (re)choose."),
    encoder: str = typer.Option(..., "--encoder", "-e", help="The encoder whose vectors choose the mosaics."),
) -> None:
    """Choose every whole-slide image's mosaic (representative tiles for slide search) anew."""
    from histo.slide_search import build_mosaics, slide_ids_of

    settings = settings_of(ctx)
    with open_index(settings) as store:
        chosen = build_mosaics(store, encoder, dataset, slide_ids_of(store, dataset), keep_encoder=False)
    console.print(
        f"{len(chosen)} slides of {dataset}: {sum(chosen.values())} mosaic tiles chosen with {encoder}"
    )


@app.command("drop")
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
