"""The real-tissue benchmark's ground truth: overlap answers, two-µm/px reads, changes, clusters, scores."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
from PIL import Image

from benchmarks.__main__ import SUITES
from benchmarks.input_conditions import NORMALISATIONS, backbone_normalisation, norm_of, renormalise
from benchmarks.real_tissue import (
    BLOCK,
    COARSER,
    TILE,
    Grid,
    Place,
    Source,
    Task,
    build_tasks,
    coarse_grid,
    coarse_reads,
    combined,
    compare,
    crop,
    dihedral,
    grid,
    group_of,
    load_sources,
    material,
    overlap_area,
    overlap_task,
    overlapping,
    pyramid,
    restained_crop,
    score,
    shifted_box,
    summary,
    upscale,
)
from histo.data.records import Box
from histo.data.slides import open_slide
from histo.embedding import Embedder
from histo.encoders import backbones
from histo.encoders.baselines import make_baseline_artifact


def _tissue(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Pink-purple blobs: every tile passes the tissue test, and no two tiles look alike."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
    blobs = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))
    base = np.array([200, 90, 190], dtype=np.int16)
    return np.clip(base + (blobs.astype(np.int16) - 128) // 3, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sources() -> list[Source]:
    return [Source("a/one", _tissue(3 * TILE, 3 * TILE, 0)), Source("b/two", _tissue(4 * TILE, 2 * TILE, 1))]


@pytest.fixture(scope="module")
def index(sources: list[Source]) -> Grid:
    return grid(sources)


class _Pixels:
    """A stand-in encoder: the tile's raw pixels, unit length (exact copies find each other)."""

    def embed(self, tiles: np.ndarray) -> np.ndarray:
        flat = tiles.reshape(len(tiles), -1).astype(np.float64) - 128
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_the_grid_is_every_tile_at_stride_tile_size(index: Grid) -> None:
    assert index.tiles.shape == (9 + 8, TILE, TILE, 3)
    boxes = {(p.source, p.box.x, p.box.y) for p in index.places}
    assert ("a/one", 2 * TILE, 2 * TILE) in boxes and ("b/two", 3 * TILE, TILE) in boxes


def test_the_overlap_answer_is_the_indexed_tile_overlapping_most(index: Grid) -> None:
    query = Place("a/one", Box(TILE + 70, TILE - 90, TILE, TILE))  # 70 px right, 90 px up of (1, 1)
    hits = overlapping(index, query)
    assert len(hits) == 4  # off-grid in x and y: four tiles overlap, none of the other source
    areas = {index.places[i].box: a for i, a in hits}
    assert areas[Box(TILE, TILE, TILE, TILE)] == (TILE - 70) * (TILE - 90) == hits[0][1]
    assert areas[Box(2 * TILE, 0, TILE, TILE)] == 70 * 90
    every = [overlap_area(p.box, query.box) if p.source == "a/one" else 0 for p in index.places]
    assert hits[0][0] == int(np.argmax(every))


def test_overlap_queries_are_cut_off_grid_and_answered_by_their_largest_overlap(
    index: Grid, sources: list[Source]
) -> None:
    task = overlap_task(index, sources, 12, np.random.default_rng(0))
    images = {s.name: s for s in sources}
    assert len(task.queries) == 12
    for q, place in enumerate(task.places):
        assert np.array_equal(task.queries[q], crop(images[place.source], place.box))
        truth = index.places[int(task.truth[q])]
        dx, dy = abs(place.box.x - truth.box.x), abs(place.box.y - truth.box.y)
        assert truth.source == place.source
        assert 0.25 * TILE - 1 <= dx <= 0.45 * TILE + 1 and 0.25 * TILE - 1 <= dy <= 0.45 * TILE + 1
        every = [overlap_area(p.box, place.box) if p.source == place.source else 0 for p in index.places]
        assert int(task.truth[q]) == int(np.argmax(every))
        assert len(task.relevant[q]) == 4 and task.relevant[q][0] == task.truth[q]
        assert task.groups[q] == group_of(place)


def test_a_shifted_box_that_would_leave_the_image_is_refused() -> None:
    rng = np.random.default_rng(0)
    drawn = [shifted_box(Box(0, 0, TILE, TILE), (TILE, TILE), rng) for _ in range(20)]
    assert drawn == [None] * 20


def test_the_coarse_read_is_the_same_region_from_the_coarser_level(sources: list[Source]) -> None:
    source = sources[0]
    with pyramid(source) as path, open_slide(path) as slide:
        assert len(slide.info.levels) == 2 and slide.info.downsamples[1] == pytest.approx(COARSER)
        assert slide.level_for(Box(TILE, 0, TILE, TILE), TILE // COARSER) == 1
        assert slide.level_for(Box(TILE, 0, TILE, TILE), TILE) == 0
    box = Box(TILE, TILE, TILE, TILE)
    coarse = coarse_reads(source, [box]).astype(np.float64)
    assert coarse.shape == (1, TILE, TILE, 3)

    def looks_like(dx: int, dy: int) -> float:
        """Distance of the read to the region (dx, dy) px away as seen at 4x the µm/px (4 x 4 averaged)."""
        fine = Image.fromarray(crop(source, Box(box.x + dx, box.y + dy, TILE, TILE)))
        return float(np.abs(coarse[0] - upscale(np.asarray(fine.reduce(COARSER)), TILE)).mean())

    shifts = [(dx, dy) for dx in (-16, -8, 0, 8, 16) for dy in (-16, -8, 0, 8, 16)]
    assert min(shifts, key=lambda s: looks_like(*s)) == (0, 0)  # the same region, to 2 coarse pixels
    assert np.abs(coarse[0] - crop(source, box)).mean() > 5  # and really coarser than level 0


def test_the_coarse_index_keeps_places_and_reads_every_tile_coarse(
    index: Grid, sources: list[Source]
) -> None:
    coarse = coarse_grid(index, sources)
    assert coarse.places == index.places and coarse.tiles.shape == index.tiles.shape
    assert not any(np.array_equal(a, b) for a, b in zip(coarse.tiles, index.tiles, strict=True))


@pytest.fixture(scope="module")
def real() -> list[Source]:
    return load_sources()


def test_the_shipped_slide_is_a_source_and_the_skin_jpeg_copy_is_not(real: list[Source]) -> None:
    names = [s.name for s in real]
    slide = [s for s in real if s.slide is not None]
    assert len(slide) == 1 and slide[0].image.shape == (2967, 2220, 3)
    assert "skin/cmu_small_region" not in names and len(names) == 4


def test_combined_changes_move_pixels_and_keep_the_shape(real: list[Source]) -> None:
    tile = crop(real[0], Box(224, 224, TILE, TILE))
    rng = np.random.default_rng(0)
    changed = combined(tile, rng)
    assert changed.shape == tile.shape and changed.dtype == np.uint8
    assert np.abs(changed.astype(int) - tile.astype(int)).mean() > 10
    # blurred: far less fine detail than the tile (or any turn of it) has
    assert (
        np.abs(np.diff(changed.astype(int), axis=1)).mean()
        < 0.5 * np.abs(np.diff(tile.astype(int), axis=1)).mean()
    )
    turns = {dihedral(tile, rng).tobytes() for _ in range(60)}
    assert tile.tobytes() not in turns and len(turns) == 7
    for corner in (None, (0, 1)):
        cropped = restained_crop(tile, corner, rng)
        assert cropped.shape == tile.shape and not np.array_equal(cropped, tile)


def test_query_groups_are_the_source_and_its_block(index: Grid) -> None:
    assert group_of(Place("a/one", Box(0, 0, TILE, TILE))) == "a/one@0,0"
    assert (
        group_of(Place("a/one", Box(2 * TILE, 0, TILE, TILE))) == f"a/one@{(2 * TILE + TILE // 2) // BLOCK},0"
    )
    assert group_of(Place("b/two", Box(0, 0, TILE, TILE))) != group_of(Place("a/one", Box(0, 0, TILE, TILE)))
    groups = {group_of(p) for p in index.places}
    assert 4 <= len(groups) < len(index.places)  # clusters: more than the sources, fewer than tiles


def test_tasks_score_and_summarise(sources: list[Source]) -> None:
    tasks = build_tasks(6, seed=0, made=material(sources))
    assert [t.name for t in tasks] == [
        "combined", "crop_central", "crop_offcentre", "coarse_query", "coarse_index", "overlap",
    ]  # fmt: skip
    for task in tasks:
        assert len(task.queries) == len(task.truth) == len(task.groups) == len(task.relevant) == 6
        assert list(task.groups) == [group_of(p) for p in task.places]
        assert all(int(t) == r[0] for t, r in zip(task.truth, task.relevant, strict=True))
    pixels = cast(Embedder, _Pixels())
    first = tasks[0].index
    found = tuple((i,) for i in range(5))
    groups = ("g0", "g0", "g1", "g2", "g2")
    exact = Task("exact", first, first.tiles[:5], first.places[:5], np.arange(5), found, groups)
    result = score(pixels, exact)
    assert result["top1"].tolist() == [1.0] * 5 and result["share"].tolist() == [1.0] * 5
    per_task = {t.name: score(pixels, t) for t in tasks}
    figures = summary(per_task, rounds=50)
    assert set(figures) == {*(t.name for t in tasks), "overlap_share", "overall"}
    for figure in figures.values():
        assert 0 <= figure["low"] <= figure["value"] <= figure["high"] <= 1
    assert figures["coarse_query"]["value"] == 1.0  # raw pixels: a blurred copy is still nearest
    same = compare(per_task, per_task, rounds=50)
    assert same["value"] == 0 and same["verdict"] == "not distinguishable"


def test_the_benchmark_is_registered() -> None:
    assert SUITES["real_tissue"] == "benchmarks.real_tissue"


def test_the_normalisation_swap_is_undone_and_an_artifact_is_renormalised(tmp_path: Path) -> None:
    original = backbones.SPECS[backbones.EFFICIENTNET]
    with pytest.raises(RuntimeError), backbone_normalisation("imagenet"):
        swapped = backbones.backbone_spec(backbones.EFFICIENTNET)
        assert list(swapped.mean) == NORMALISATIONS["imagenet"][0] and swapped.build is original.build
        raise RuntimeError("a failed run")
    assert backbones.SPECS[backbones.EFFICIENTNET] is original
    folder = make_baseline_artifact("imagenet", tmp_path / "imagenet", input_size=64)
    assert norm_of(folder) == "effnet"
    assert norm_of(renormalise(folder, "imagenet")) == "imagenet"
