"""``histocli data synth``: a synthetic H&E data set written in the real data set's layout."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from cli.common import console, domain_errors


class SynthName(StrEnum):
    bach = "bach"
    bracs = "bracs"
    crc = "crc"


@domain_errors
def synth(
    dataset: SynthName = typer.Argument(..., help="Which data set's classes and layout to imitate."),
    out: Path = typer.Argument(..., help="Folder to write the data set into."),
    slides: int = typer.Option(8, "--slides", min=1, help="Synthetic slides (stain, blur, background each)."),
    tiles_per_slide: int = typer.Option(16, "--tiles-per-slide", min=1, help="Tiles each slide contributes."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    sheet: bool = typer.Option(
        True, "--contact-sheet/--no-contact-sheet", help="Also write contact_sheet.png."
    ),
    wsi: bool = typer.Option(
        False,
        "--wsi",
        help="Whole-slide images instead: pyramidal TIFFs and slides.csv (--slides per class).",
    ),
    class_folders: bool = typer.Option(
        False,
        "--class-folders",
        help="Write OUT/<label>/<image>.png, as a lab's own folder of class sub-folders (layout folder), "
        "instead of the data set's own layout.",
    ),
) -> None:
    """Write synthetic H&E whose class signal is morphology, not colour (numbers are synthetic)."""
    from histo.data.synth import contact_sheet, write_synthetic  # imported on use: keeps --help fast

    if wsi:
        from histo.data.synth_slides import write_synthetic_slides

        written = write_synthetic_slides(dataset.value, out, slides_per_class=slides, seed=seed)
        console.print(
            f"wrote {len(written)} synthetic {dataset.value} whole-slide images (pyramidal TIFF, 0.5 µm/px) "
            f"and slides.csv -> {out}; ingest with: histocli ingest {out} --layout slides"
        )
        return

    summary = write_synthetic(
        dataset.value,
        out,
        slides=slides,
        tiles_per_slide=tiles_per_slide,
        seed=seed,
        class_folders=class_folders,
    )
    layout = "folder" if class_folders else dataset.value
    console.print(
        f"wrote synthetic {summary.dataset}: {summary.slides} slides, {summary.images} images, "
        f"{summary.tiles} tiles -> {summary.root}; ingest with: histocli ingest {out} --layout {layout}",
        highlight=False,
        soft_wrap=True,
    )
    if sheet:
        png = contact_sheet(dataset.value, out / "contact_sheet.png", seed=seed)
        console.print(f"contact sheet: {png}")
