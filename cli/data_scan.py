"""``histocli data scan``: what a data set folder holds, what it would tile into, what is wrong."""

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
    pick_layout,
    settings_of,
    table,
    tiling_config,
)
from histo.data.datasets import scan_dataset
from histo.data.inspect import ScanReport, inspect_scan


@domain_errors
def scan(
    ctx: typer.Context,
    root: Path = typer.Argument(..., help="The data set folder, as downloaded."),
    layout: str | None = typer.Option(
        None,
        "--layout",
        help="How the folder is laid out: bracs, bach, crc, folder (class folders) or slides.",
    ),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="The old spelling of --layout."),
    decode: bool = typer.Option(
        False, "--decode", help="Decode every image: exact tile counts, finds corrupt files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    tile_size: int | None = TILE_SIZE,
    stride: int | None = STRIDE,
    target_mpp: float | None = TARGET_MPP,
    min_tissue: float | None = MIN_TISSUE,
) -> None:
    """Count images and tiles per split and label, and list every problem found."""
    settings = settings_of(ctx)
    config = tiling_config(settings, tile_size, stride, target_mpp, min_tissue)
    result = scan_dataset(root, pick_layout(layout, dataset))
    report = inspect_scan(result, config, settings.images.max_pixels, decode=decode, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    _print_report(report)


def _print_report(report: ScanReport) -> None:
    tiles_title = "tiles" if report.exact else "grid tiles (before tissue test)"
    shown = table(("split", "label", "images", tiles_title), f"{report.dataset} at {report.root}")
    for key in sorted(report.images):
        shown.add_row(key[0], key[1], str(report.images[key]), str(report.tiles[key]))
    shown.add_row("all", "", str(sum(report.images.values())), str(sum(report.tiles.values())), style="bold")
    console.print(shown, crop=False)
    if not report.exact:
        console.print(
            "tile counts are grid upper bounds; --decode applies the tissue test and finds corrupt files"
        )
    console.print(f"problems: {len(report.problems)}")
    for problem in report.problems:
        console.print(f"  {problem.path}: {problem.reason}", highlight=False, soft_wrap=True)
