"""Real-tissue retrieval, made hard enough to tell encoders apart: combined changes, two µm/px, overlap.

The near-duplicate task (:mod:`benchmarks.near_duplicates`) changes each query one way, and every
pretrained encoder finds 99-100 % of them. This suite asks harder questions of the same real H&E.

Index: every 224 px grid tile (stride = tile size, at least half tissue) of the shipped real samples —
the carcinoma and the two ovarian images (``histo/data/samples``) and the real Aperio slide
``histo/data/wsi_samples/cmu_small_region.svs`` read through OpenSlide (the skin sample is a JPEG of
that same slide, so it is left out: it would put every slide tile in the index twice). Queries come
from tiles that are at least 80 % tissue: at the tissue's edge the outline of the glass alone
identifies a tile, even to random weights. Per change (``truth`` = the tile a query must find first):

- ``combined``: a tile turned or mirrored, stain-shifted (HED ±15-25 %, as between labs), blurred
  (Gaussian sigma 2.5 px) and re-saved as JPEG at quality 20, all at once;
- ``crop_central``: the central 60 % of a tile scaled back to 224 px (another objective), and
  stain-shifted so colour alone cannot answer it;
- ``crop_offcentre``: a 60 % window in a corner of a tile, scaled back and stain-shifted;
- ``coarse_query`` (two µm/px): a tile's region read from a pyramid level 4x coarser (0.5 → 2 µm/px
  on the slide) and scaled to 224 px; the answer is the fine tile of the same region;
- ``coarse_index``: the reverse — every indexed tile read from the coarse level, the query fine;
- ``overlap`` ("which tile overlaps mine"): a tile cut 25-45 % of a tile off a grid position in x
  and in y; the answer is the indexed tile it overlaps most. Also reported, ``overlap_share``: the
  share of the overlapping indexed tiles (up to 4) found in the top n, n = how many overlap.

The shipped slide has a single level, and photos have none, so each source is written as a 2-level
pyramidal TIFF (level 1 = level 0 box-filtered by 4 and JPEG-compressed at Q=30, as the slide's own
scanner builds levels) and every coarse read goes through OpenSlide and histo's own slide reader
(:class:`histo.data.slides.Slide`), which picks level 1 for it. A slide with a 4x level is read as is.

Encoders, all at one input size (96 px by default): the ``random``, ``colorhist`` and ``imagenet``
baselines, and SimCLR continued from the ImageNet start for a fixed number of steps on a synthetic
BACH-like set (fixed seed). Reported: top-1 per change and overall (the mean over the six changes),
each with a 95 % cluster-bootstrap interval (:mod:`histo.uncertainty`) that resamples source regions
(the query's image and its 512 x 512 px block), not single queries; and for every pair of encoders
the paired difference of the overall figure (same queries, same resampled regions) with its verdict.
``python -m benchmarks run --only real_tissue [--quick]``; the parts (``build_tasks``, ``score``,
``summary``) are reused by :mod:`benchmarks.input_conditions`.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from benchmarks.common import Row
from benchmarks.near_duplicates import stain_shift
from histo.data.records import Box
from histo.data.samples import WSI_SAMPLE, sample_paths
from histo.data.slides import open_slide
from histo.data.synth import write_synthetic
from histo.data.tiling import grid_boxes
from histo.data.tissue import is_tissue, tissue_fraction
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.training import TrainConfig, train
from histo.uncertainty import PerQuery, group_weights, interval, paired

TILE = 224
#: Side of the square blocks a source is cut into for the bootstrap: one block is one cluster.
BLOCK = 512
MIN_TISSUE = 0.5
#: The least tissue a query holds (see ``query_pool``).
QUERY_TISSUE = 0.8
CROP_SHARE = 0.6
#: How much coarser the second µm/px is (0.5 → 2 µm/px on the shipped slide).
COARSER = 4
#: A query's offset from its grid position, as a share of the tile, in x and in y (drawn, signed).
OFFSET = (0.25, 0.45)
BLUR_RADIUS = 2.5
JPEG_QUALITY = 20
#: JPEG quality of the written coarse level: the shipped slide's own levels are JPEG at Q=30.
LEVEL_QUALITY = 30
CHANGES = ("combined", "crop_central", "crop_offcentre", "coarse_query", "coarse_index", "overlap")
BASELINES = ("random", "colorhist", "imagenet")
SSL = "simclr"
ENCODERS = (*BASELINES, SSL)
INPUT_SIZE = 96
QUERIES = {False: 120, True: 30}
#: SimCLR's optimiser steps (full, quick): short, fixed, so the figures do not depend on the clock.
STEPS = {False: 150, True: 6}
BATCH_SIZE = 32
SEED = 0
ROUNDS = 1000


@dataclass(frozen=True)
class Source:
    """One real image at its full resolution; ``slide`` when it is read through OpenSlide."""

    name: str
    image: np.ndarray
    slide: Path | None = None


@dataclass(frozen=True)
class Place:
    """Where a tile or a query comes from: its source and its box in the source's level-0 pixels."""

    source: str
    box: Box


@dataclass(frozen=True)
class Grid:
    """Indexed tiles and where each lies."""

    tiles: np.ndarray
    places: tuple[Place, ...]


@dataclass(frozen=True)
class Task:
    """Queries against an index: per query where it was cut, the tile it must find first, every tile
    that counts as found, and its bootstrap cluster."""

    name: str
    index: Grid
    queries: np.ndarray
    places: tuple[Place, ...]
    truth: np.ndarray
    relevant: tuple[tuple[int, ...], ...]
    groups: tuple[str, ...]


# ----------------------------------------------------------------------------- sources and grid
def load_sources(slide_path: Path = WSI_SAMPLE) -> list[Source]:
    """The shipped real photos (less the JPEG copy of the slide) and the slide's level 0."""
    photos = [
        Source(f"{p.parent.name}/{p.stem}", np.asarray(Image.open(p).convert("RGB")))
        for p in sample_paths()
        if p.stem != slide_path.stem
    ]
    return [*photos, Source(f"slide/{slide_path.stem}", read_level0(slide_path), slide_path)]


def read_level0(path: Path) -> np.ndarray:
    """A (small) slide's whole level 0 through OpenSlide, laid on white glass."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        region = slide.read_region((0, 0), 0, slide.level_dimensions[0])
    glass = Image.new("RGB", region.size, (255, 255, 255))
    glass.paste(region, mask=region.getchannel("A"))
    return np.asarray(glass)


def crop(source: Source, box: Box) -> np.ndarray:
    """The box's pixels at level 0 (boxes always lie inside the source)."""
    return np.ascontiguousarray(source.image[box.y : box.y + box.h, box.x : box.x + box.w])


def grid(sources: Sequence[Source], tile: int = TILE) -> Grid:
    """Every tissue tile of a stride-``tile`` grid over each source: the index of every task."""
    tiles, places = [], []
    for source in sources:
        height, width = source.image.shape[:2]
        for box in grid_boxes(width, height, tile, tile):
            pixels = crop(source, box)
            if box.w == box.h == tile and is_tissue(pixels, MIN_TISSUE):
                tiles.append(pixels)
                places.append(Place(source.name, box))
    return Grid(np.stack(tiles), tuple(places))


def group_of(place: Place, block: int = BLOCK) -> str:
    """The bootstrap cluster of a query: its source and the block that holds its box's centre."""
    cx, cy = place.box.x + place.box.w // 2, place.box.y + place.box.h // 2
    return f"{place.source}@{cx // block},{cy // block}"


# ----------------------------------------------------------------------------- changes
def dihedral(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 7 non-identity turns/mirrors: a tile has no up."""
    k = int(rng.integers(1, 8))
    turned = np.rot90(tile, k % 4)
    return np.ascontiguousarray(turned[:, ::-1] if k >= 4 else turned)


def jpeg(tile: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def combined(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn/mirror, stain shift, blur and JPEG at once: another lab, scanner and viewer together."""
    shifted = stain_shift(np.array(dihedral(tile, rng)), rng)  # a writable copy for torch
    blurred = Image.fromarray(shifted).filter(ImageFilter.GaussianBlur(radius=BLUR_RADIUS))
    return jpeg(np.asarray(blurred))


def crop_rescale(tile: np.ndarray, corner: tuple[int, int] | None, share: float = CROP_SHARE) -> np.ndarray:
    """A ``share`` window scaled back to the tile size: central (``corner=None``) or in a corner
    (``corner`` = (0|1, 0|1) for left|right, top|bottom), so its centre is off the tile's."""
    size = tile.shape[0]
    side = round(size * share)
    if corner is None:
        x = y = (size - side) // 2
    else:
        x, y = corner[0] * (size - side), corner[1] * (size - side)
    window = Image.fromarray(tile).crop((x, y, x + side, y + side))
    return np.asarray(window.resize((size, size), Image.Resampling.BICUBIC))


def restained_crop(tile: np.ndarray, corner: tuple[int, int] | None, rng: np.random.Generator) -> np.ndarray:
    """A crop (``crop_rescale``) seen in another lab's stain, so colour alone cannot answer it
    (unstained, the colour histogram found more central crops than ImageNet features: 0.83 vs 0.57)."""
    return stain_shift(np.array(crop_rescale(tile, corner)), rng)


def upscale(tile: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).resize((size, size), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------- two µm/px
def _write_pyramid(level0: np.ndarray, factor: int, path: Path) -> Path:
    """A 2-level pyramidal TIFF that OpenSlide reads: level 1 is level 0 box-filtered by ``factor``
    and JPEG-compressed (Q=30, as the shipped slide's own levels), as scanners build their levels."""
    import tifffile

    level1 = jpeg(np.asarray(Image.fromarray(level0).reduce(factor)), LEVEL_QUALITY)
    with tifffile.TiffWriter(path) as writer:
        writer.write(level0, tile=(256, 256), photometric="rgb", compression="deflate")
        writer.write(level1, tile=(256, 256), photometric="rgb", compression="deflate", subfiletype=1)
    return path


@contextmanager
def pyramid(source: Source, factor: int = COARSER) -> Iterator[Path]:
    """A slide of ``source`` with a level ``factor`` x coarser than level 0: the slide itself when it
    has one, else a 2-level pyramid written from its level 0 (photos, and the single-level sample)."""
    import openslide

    if source.slide is not None:
        with openslide.OpenSlide(str(source.slide)) as slide:
            has_level = any(abs(d - factor) < 0.1 for d in slide.level_downsamples)
        if has_level:
            yield source.slide
            return
    with tempfile.TemporaryDirectory() as tmp:
        yield _write_pyramid(source.image, factor, Path(tmp) / "pyramid.tif")


def coarse_reads(source: Source, boxes: Sequence[Box], factor: int = COARSER) -> np.ndarray:
    """Each level-0 box read by histo's slide reader at ``1/factor`` of its size (so from the coarse
    level) and scaled back to the box's size: the same region at ``factor`` x the µm/px."""
    with pyramid(source, factor) as path, open_slide(path) as slide:
        return np.stack([upscale(slide.read(box, box.w // factor), box.w) for box in boxes])


def coarse_grid(index: Grid, sources: Sequence[Source], factor: int = COARSER) -> Grid:
    """The index read at ``factor`` x the µm/px, every tile from its source's coarse level."""
    tiles = index.tiles.copy()
    for source in sources:
        rows = [i for i, p in enumerate(index.places) if p.source == source.name]
        if rows:
            tiles[rows] = coarse_reads(source, [index.places[i].box for i in rows], factor)
    return Grid(tiles, index.places)


# ----------------------------------------------------------------------------- overlap
def overlap_area(a: Box, b: Box) -> int:
    width = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    height = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    return max(0, width) * max(0, height)


def overlapping(index: Grid, place: Place) -> list[tuple[int, int]]:
    """(indexed tile, overlap in px²) of every indexed tile the query's box overlaps, largest first."""
    found = [
        (i, overlap_area(p.box, place.box)) for i, p in enumerate(index.places) if p.source == place.source
    ]
    return sorted(((i, a) for i, a in found if a > 0), key=lambda pair: (-pair[1], pair[0]))


def shifted_box(anchor: Box, size: tuple[int, int], rng: np.random.Generator) -> Box | None:
    """``anchor`` moved 25-45 % of a tile in x and y (signs drawn); None when it leaves the image."""
    width, height = size
    dx, dy = (int(rng.choice([-1, 1]) * round(rng.uniform(*OFFSET) * anchor.w)) for _ in range(2))
    box = Box(anchor.x + dx, anchor.y + dy, anchor.w, anchor.h)
    inside = box.x >= 0 and box.y >= 0 and box.x + box.w <= width and box.y + box.h <= height
    return box if inside else None


# ----------------------------------------------------------------------------- tasks
def query_pool(index: Grid) -> list[int]:
    """Indexed tiles that may be queries: nearly all tissue. A tile at the tissue's edge is
    fingerprinted by the outline of its glass, which any encoder (even random weights) matches."""
    return [i for i, tile in enumerate(index.tiles) if tissue_fraction(tile) >= QUERY_TISSUE]


def _pick(pool: Sequence[int], count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(np.asarray(pool), size=min(count, len(pool)), replace=False))


def _self_task(name: str, index: Grid, chosen: np.ndarray, queries: Sequence[np.ndarray]) -> Task:
    """Queries whose answer is the indexed tile they were made from."""
    return Task(
        name,
        index,
        np.stack(list(queries)),
        tuple(index.places[i] for i in chosen),
        chosen.copy(),
        tuple((int(i),) for i in chosen),
        tuple(group_of(index.places[i]) for i in chosen),
    )


def overlap_task(index: Grid, sources: Sequence[Source], count: int, rng: np.random.Generator) -> Task:
    """Tiles cut off-grid; the answer is the indexed tile each overlaps most (see ``overlapping``)."""
    images = {s.name: s for s in sources}
    queries: list[np.ndarray] = []
    places: list[Place] = []
    truth: list[int] = []
    relevant: list[tuple[int, ...]] = []
    groups: list[str] = []
    for _ in range(count * 50):
        if len(queries) == count:
            break
        anchor = index.places[int(rng.integers(len(index.places)))]
        source = images[anchor.source]
        box = shifted_box(anchor.box, (source.image.shape[1], source.image.shape[0]), rng)
        if box is None or tissue_fraction(pixels := crop(source, box)) < QUERY_TISSUE:
            continue
        place = Place(anchor.source, box)
        hits = overlapping(index, place)
        queries.append(pixels)
        places.append(place)
        truth.append(hits[0][0])
        relevant.append(tuple(i for i, _ in hits))
        groups.append(group_of(place))
    return Task(
        "overlap", index, np.stack(queries), tuple(places), np.asarray(truth), tuple(relevant), tuple(groups)
    )


@dataclass(frozen=True)
class Material:
    """The sources and the index read at both µm/px: built once, shared by every query sample."""

    sources: tuple[Source, ...]
    index: Grid
    coarse: Grid


def material(sources: Sequence[Source] | None = None) -> Material:
    """The shipped sources (or ``sources``), their grid and its coarse reading."""
    chosen = tuple(sources) if sources is not None else tuple(load_sources())
    index = grid(chosen)
    return Material(chosen, index, coarse_grid(index, chosen))


def build_tasks(count: int, seed: int = SEED, made: Material | None = None) -> list[Task]:
    """Every task of the module docstring, ``count`` queries each (fewer where the pool is smaller);
    ``seed`` draws the queries and their changes."""
    made = made or material()
    index, coarse = made.index, made.coarse
    rng = np.random.default_rng(seed)
    pool = query_pool(index)
    picks = {name: _pick(pool, count, rng) for name in CHANGES if name != "overlap"}
    corners = [(int(rng.integers(2)), int(rng.integers(2))) for _ in picks["crop_offcentre"]]
    queries = {
        "combined": [combined(index.tiles[i], rng) for i in picks["combined"]],
        "crop_central": [restained_crop(index.tiles[i], None, rng) for i in picks["crop_central"]],
        "crop_offcentre": [
            restained_crop(index.tiles[i], c, rng)
            for i, c in zip(picks["crop_offcentre"], corners, strict=True)
        ],
        "coarse_query": list(coarse.tiles[picks["coarse_query"]]),
        "coarse_index": list(index.tiles[picks["coarse_index"]]),
    }
    tasks = [
        _self_task(name, coarse if name == "coarse_index" else index, picks[name], made_queries)
        for name, made_queries in queries.items()
    ]
    return [*tasks, overlap_task(index, made.sources, count, rng)]


# ----------------------------------------------------------------------------- scoring
def score(embedder: Embedder, task: Task, index_vectors: np.ndarray | None = None) -> dict[str, Any]:
    """Per query: ``top1`` (1.0 when the answer is the top hit) and ``share`` (the share of the
    relevant tiles in the top n, n = how many are relevant), with the query groups."""
    index = embedder.embed(task.index.tiles) if index_vectors is None else index_vectors
    ranked = np.argsort(-(embedder.embed(task.queries) @ index.T), axis=1, kind="stable")
    top1 = (ranked[:, 0] == task.truth).astype(np.float64)
    share = np.asarray(
        [
            len(set(ranked[q, : len(rel)].tolist()) & set(rel)) / len(rel)
            for q, rel in enumerate(task.relevant)
        ]
    )
    return {"top1": top1, "share": share, "groups": list(task.groups)}


def score_all(
    embedder: Embedder, tasks: Sequence[Task], cache: dict[int, np.ndarray] | None = None
) -> dict[str, dict[str, Any]]:
    """Every task's per-query figures; each distinct index is embedded once (``cache``, keyed by the
    index's array, may be kept across calls with the same embedder and ``Material``)."""
    cache = {} if cache is None else cache
    out = {}
    for task in tasks:
        key = id(task.index.tiles)
        if key not in cache:
            cache[key] = embedder.embed(task.index.tiles)
        out[task.name] = score(embedder, task, cache[key])
    return out


def _pooled(
    per_task: dict[str, dict[str, Any]], value: str = "top1"
) -> tuple[PerQuery, np.ndarray, list[str]]:
    """Every task's queries in one list; ``macro`` over tasks, so each change weighs the same."""
    values = np.concatenate([r[value] for r in per_task.values()])
    classes = np.concatenate([[name] * len(r[value]) for name, r in per_task.items()])
    groups = [g for r in per_task.values() for g in r["groups"]]
    return PerQuery(values, macro=True), classes, groups


def summary(per_task: dict[str, dict[str, Any]], rounds: int = ROUNDS, seed: int = SEED) -> dict[str, Any]:
    """Top-1 per task and overall (mean over tasks), plus the overlap share, each with its interval.
    Overall resamples regions across all tasks at once, so a region's queries stay together."""
    metric, classes, groups = _pooled(per_task)
    out: dict[str, Any] = {
        "overall": interval(metric, classes, group_weights(groups, rounds, seed)).as_dict()
    }
    for name, result in per_task.items():
        weights = group_weights(result["groups"], rounds, seed)
        labels = np.full(len(result["top1"]), name)
        out[name] = interval(PerQuery(result["top1"]), labels, weights).as_dict()
        if name == "overlap":
            out["overlap_share"] = interval(PerQuery(result["share"]), labels, weights).as_dict()
    return out


def compare(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], rounds: int = ROUNDS, seed: int = SEED
) -> dict[str, object]:
    """Overall top-1 of ``a`` minus ``b`` on the same queries and resampled regions, with a verdict
    (paired: sharper than comparing the two intervals), and whether the intervals are disjoint."""
    metric_a, classes, groups = _pooled(a)
    metric_b, _, _ = _pooled(b)
    weights = group_weights(groups, rounds, seed)
    first, second = interval(metric_a, classes, weights), interval(metric_b, classes, weights)
    disjoint = first.low > second.high or second.low > first.high
    return {**paired(metric_a, metric_b, classes, weights).as_dict(), "intervals_disjoint": disjoint}


# ----------------------------------------------------------------------------- encoders and run
def train_simclr(work: Path, steps: int, input_size: int, seed: int = SEED) -> Path:
    """SimCLR continued from the ImageNet start on a synthetic BACH-like set: fixed steps and seed."""
    write_synthetic("bach", work / "bach", slides=10, tiles_per_slide=16, seed=seed)
    config = TrainConfig(
        method="simclr",
        data=work / "bach",
        layout="bach",
        home=work,
        out=work / "encoders" / SSL,
        steps=steps,
        batch_size=BATCH_SIZE,
        init="imagenet",
        input_size=input_size,
        seed=seed,
        progress=False,
    )
    return train(config)


def encoders(work: Path, steps: int, input_size: int = INPUT_SIZE, seed: int = SEED) -> dict[str, Path]:
    """Artifact folders of every encoder, all at ``input_size``."""
    folders = {
        name: make_baseline_artifact(name, work / "encoders" / name, input_size=input_size)
        for name in BASELINES
    }
    folders[SSL] = train_simclr(work, steps, input_size, seed)
    return folders


def run(quick: bool, device: str = "cpu", input_size: int = INPUT_SIZE) -> dict[str, Any]:
    """Every encoder on every task: figures with intervals, paired verdicts, the task sizes."""
    tasks = build_tasks(QUERIES[quick])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in encoders(Path(tmp), STEPS[quick], input_size).items():
            results[name] = score_all(Embedder.from_artifact(folder, device=device), tasks)
    pairs = [(a, b) for k, a in enumerate(ENCODERS) for b in ENCODERS[:k]]
    return {
        "input_size": input_size,
        "simclr_steps": STEPS[quick],
        "batch_size": BATCH_SIZE,
        "index_tiles": len(tasks[0].index.tiles),
        "queries": {t.name: len(t.queries) for t in tasks},
        "clusters": len({g for t in tasks for g in t.groups}),
        "bootstrap": {"rounds": ROUNDS, "level": 0.95, "unit": f"source x {BLOCK} px block"},
        "encoders": {name: summary(per_task) for name, per_task in results.items()},
        "paired_overall": {f"{a} - {b}": compare(results[a], results[b]) for a, b in pairs},
    }


def _cell(figure: dict[str, float]) -> str:
    return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def rows(report: dict[str, Any]) -> list[Row]:
    """Top-1 per change and overall per encoder against random's figure of the same run, then the
    paired overall differences (the ratio column holds the verdict)."""
    table = report["encoders"]
    out = []
    for figure in (*CHANGES, "overlap_share", "overall"):
        what = figure if figure == "overlap_share" else f"{figure} top-1"
        floor = table["random"][figure]
        for name in ENCODERS[1:]:
            value = table[name][figure]
            ratio = f"{value['value'] / floor['value']:.2f}" if floor["value"] else "inf"
            out.append(Row(f"{what}: {name}", _cell(value), _cell(floor), ratio))
    for pair, verdict in report["paired_overall"].items():
        spread = f"{verdict['value']:+.3f} [{verdict['low']:+.3f}, {verdict['high']:+.3f}]"
        out.append(Row(f"overall {pair} (paired)", spread, "", str(verdict["verdict"])))
    return out
