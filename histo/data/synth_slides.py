"""Synthetic whole-slide images: pyramidal TIFFs with tissue in known places, for tests and the demo.

``write_pyramid`` writes a tiled, zlib-compressed pyramid with ``tifffile``: each level its own
page (``subfiletype=1`` for the reduced ones; not SubIFDs), µm/px in the resolution tags, so
OpenSlide opens it as ``generic-tiff`` with ``openslide.mpp-x`` set. Level 0 comes tile by tile
from a function, so a 100,000 x 100,000 px pyramid is written without holding it in memory.

``write_synthetic_slides`` renders a WSI data set: per slide, a glass background with a few
tissue regions of one class (the morphology of ``histo.data.synth``; stain drawn per slide) at
places recorded in ``slides.csv`` beside ``path,label,slide_id,patient_id``, the layout histo's
``slides`` adapter reads. Numbers measured on it are **synthetic**.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histo.data.records import Box
from histo.data.synth import CLASS_TABLES, render_image, write_marker
from histo.errors import InvalidInputError

TILE = 256
GLASS_RGB = (244, 243, 245)
SLIDES_CSV = "slides.csv"
#: Tissue regions per synthetic slide, and their side as a share of the slide's shorter side.
REGIONS_PER_SLIDE = 2
REGION_SHARE = 0.35


@dataclass(frozen=True)
class SynthSlide:
    """One written slide: where, its class, its ids, and the level-0 boxes that hold tissue."""

    path: Path
    label: str
    slide_id: str
    patient_id: str
    regions: tuple[Box, ...]


def write_pyramid(
    path: Path,
    width: int,
    height: int,
    tile_of: Callable[[int, int], np.ndarray],
    mpp: float,
    downsample: int = 4,
    min_side: int = 512,
    level_tile_of: Callable[[int, int, int], np.ndarray] | None = None,
) -> list[tuple[int, int]]:
    """Write a tiled pyramid; ``tile_of(x, y)`` gives level 0's TILE x TILE RGB tile at (x, y).

    Reduced levels are built from the level above, tile row by tile row (a band of TILE rows at a
    time), or, when given, from ``level_tile_of(level, x, y)`` directly (a generator that knows
    its content at every level: the 100,000 px benchmark pyramid, whose bands would be 300 MB).
    Returns the levels' (width, height)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = [(width, height)]
    while max(sizes[-1]) // downsample >= min_side:
        w, h = sizes[-1]
        sizes.append((max(1, w // downsample), max(1, h // downsample)))
    resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        source: Callable[[int, int], np.ndarray] = tile_of
        for level, (w, h) in enumerate(sizes):
            scale = downsample**level
            tif.write(
                _tiles(w, h, source),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                resolution=(resolution[0] / scale, resolution[1] / scale),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                description=f"histo synthetic slide level {level}",
            )
            if level + 1 < len(sizes):
                if level_tile_of is not None:
                    source = functools.partial(level_tile_of, level + 1)
                else:
                    source = _reduced(source, w, h, downsample)
    return sizes


def _tiles(width: int, height: int, tile_of: Callable[[int, int], np.ndarray]) -> Iterator[np.ndarray]:
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            yield tile_of(x, y)


def _reduced(
    above: Callable[[int, int], np.ndarray], width: int, height: int, factor: int
) -> Callable[[int, int], np.ndarray]:
    """Tiles of the level below ``above`` (``width`` x ``height``), each the mean of factor²
    pixels; the band of ``above`` tiles a row needs is cached while that row is written."""
    band: dict[int, np.ndarray] = {}

    def tile_of(x: int, y: int) -> np.ndarray:
        top = y * factor
        if top not in band:
            band.clear()
            rows = range(top, min(height, top + TILE * factor), TILE)
            band[top] = np.concatenate(
                [np.concatenate([above(cx, ry) for cx in range(0, width, TILE)], axis=1) for ry in rows],
                axis=0,
            )
        strip = band[top][:, x * factor : (x + TILE) * factor]
        out = np.full((TILE, TILE, 3), GLASS_RGB, dtype=np.uint8)
        h, w = strip.shape[0] // factor, strip.shape[1] // factor
        if h and w:
            small = strip[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
            out[:h, :w] = small.astype(np.uint8)
        return out

    return tile_of


def canvas_tiles(canvas: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``tile_of`` for an in-memory level 0 (padded with glass at the right and bottom edges)."""

    def tile_of(x: int, y: int) -> np.ndarray:
        out = np.full((TILE, TILE, 3), GLASS_RGB, dtype=np.uint8)
        part = canvas[y : y + TILE, x : x + TILE]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    return tile_of


def slide_canvas(
    dataset: str, label: str, seed: int, slide: int, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[Box, ...]]:
    """A (height, width) glass canvas with ``REGIONS_PER_SLIDE`` tissue regions of one class."""
    height, width = size
    rng = np.random.default_rng([seed, slide, 7])
    side = int(min(width, height) * REGION_SHARE) // 32 * 32
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = GLASS_RGB
    canvas += rng.integers(0, 3, size=canvas.shape, dtype=np.uint8)  # scanner noise, no chroma
    regions: list[Box] = []
    for n in range(REGIONS_PER_SLIDE):
        for _ in range(50):  # place without overlap
            x = int(rng.integers(0, width - side))
            y = int(rng.integers(0, height - side))
            box = Box(x, y, side, side)
            if not any(_overlap(box, other) for other in regions):
                break
        tissue = render_image(dataset, label, seed, slide * REGIONS_PER_SLIDE + n, (side, side))
        canvas[y : y + side, x : x + side] = tissue
        regions.append(box)
    return canvas, tuple(regions)


def _overlap(a: Box, b: Box) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


def write_synthetic_slides(
    dataset: str,
    out: Path,
    slides_per_class: int,
    seed: int = 0,
    size: tuple[int, int] = (2048, 3072),
    mpp: float = 0.5,
) -> list[SynthSlide]:
    """A WSI data set under ``out``: ``<label>/<slide_id>.tiff`` plus ``slides.csv``."""
    if dataset not in CLASS_TABLES:
        choices = ", ".join(CLASS_TABLES)
        raise InvalidInputError(f"unknown synthetic data set {dataset!r}; choose one of: {choices}")
    if slides_per_class < 1:
        raise InvalidInputError(f"slides per class must be at least 1 (got {slides_per_class})")
    written: list[SynthSlide] = []
    index = 0
    for label in CLASS_TABLES[dataset]:
        for _ in range(slides_per_class):
            slide_id = f"{dataset}_wsi_{index:03d}"
            canvas, regions = slide_canvas(dataset, label, seed, index, size)
            path = out / label / f"{slide_id}.tiff"
            write_pyramid(path, size[1], size[0], canvas_tiles(canvas), mpp)
            written.append(SynthSlide(path, label, slide_id, f"P{index:03d}", regions))
            index += 1
    with (out / SLIDES_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "slide_id", "patient_id", "regions"])
        for s in written:
            boxes = ";".join(f"{b.x},{b.y},{b.w},{b.h}" for b in s.regions)
            writer.writerow([s.path.relative_to(out).as_posix(), s.label, s.slide_id, s.patient_id, boxes])
    write_marker(out)
    return written


def to_png(canvas: np.ndarray, path: Path) -> None:
    """The same pixels as one flat PNG (for comparing a pyramid against a photo)."""
    Image.fromarray(canvas).save(path, compress_level=1)


__all__ = [
    "SLIDES_CSV",
    "TILE",
    "SynthSlide",
    "canvas_tiles",
    "slide_canvas",
    "to_png",
    "write_pyramid",
    "write_synthetic_slides",
]
