"""Tiling: exact counts and boxes, resolution, tissue test, deterministic ids and payloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo.data.records import Box, ImageRecord, point_id
from histo.data.tiling import TilingConfig, grid_boxes, iter_tiles
from histo.errors import InvalidInputError
from tests.helpers import tissue_array, write_image


def _record(path: Path, mpp: float | None = None) -> ImageRecord:
    return ImageRecord(
        path=path, rel_path=path.name, dataset="folder", label="t", split="train", image_id=path.stem, mpp=mpp
    )


def test_grid_boxes_exact() -> None:
    boxes = grid_boxes(1000, 700, 224, 224)
    assert len(boxes) == 4 * 3
    assert boxes[:5] == [
        Box(0, 0, 224, 224),
        Box(224, 0, 224, 224),
        Box(448, 0, 224, 224),
        Box(672, 0, 224, 224),
        Box(0, 224, 224, 224),
    ]
    assert boxes[-1] == Box(672, 448, 224, 224)


def test_grid_with_overlap_and_small_images() -> None:
    assert [b.x for b in grid_boxes(448, 224, 224, 112)] == [0, 112, 224]
    assert grid_boxes(100, 50, 224, 224) == [Box(0, 0, 100, 50)]
    assert grid_boxes(500, 100, 224, 224) == [Box(0, 0, 224, 100), Box(224, 0, 224, 100)]
    assert grid_boxes(0, 10, 224, 224) == []


def test_iter_tiles_yields_every_grid_tile_of_tissue(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", 700, 500)
    tiles = list(iter_tiles(_record(path), TilingConfig()))
    assert [(t.box.x, t.box.y) for t in tiles] == [
        (0, 0),
        (224, 0),
        (448, 0),
        (0, 224),
        (224, 224),
        (448, 224),
    ]
    assert all(t.pixels.shape == (224, 224, 3) and t.pixels.dtype == np.uint8 for t in tiles)
    source = np.asarray(Image.open(path))
    assert np.array_equal(tiles[4].pixels, source[224:448, 224:448])


def test_background_tiles_are_dropped(tmp_path: Path) -> None:
    array = tissue_array(448, 224)
    array[:, 224:] = 242  # bright, grey glass
    path = tmp_path / "half.png"
    Image.fromarray(array).save(path)
    tiles = list(iter_tiles(_record(path), TilingConfig()))
    assert [t.box.x for t in tiles] == [0]
    assert len(list(iter_tiles(_record(path), TilingConfig(min_tissue=0.0)))) == 2


def test_target_resolution_cuts_larger_source_tiles(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", 1000, 500)
    config = TilingConfig(tile_size=224, target_mpp=0.5)
    tiles = list(iter_tiles(_record(path, mpp=0.25), config))
    assert [(t.box.x, t.box.w) for t in tiles] == [(0, 448), (448, 448)]
    assert all(t.pixels.shape == (224, 224, 3) for t in tiles)
    assert tiles[0].payload["w"] == 448 and tiles[0].payload["tile_size"] == 224
    unknown = list(iter_tiles(_record(path, mpp=None), config))
    assert len(unknown) == 4 * 2  # source resolution unknown: no resampling


def test_ids_are_deterministic_and_payload_complete(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", 448, 224)
    first = list(iter_tiles(_record(path), TilingConfig()))
    second = list(iter_tiles(_record(path), TilingConfig()))
    assert [t.id for t in first] == [t.id for t in second]
    assert len({t.id for t in first}) == 2
    assert first[1].id == point_id("folder", "a.png", Box(224, 0, 224, 224))
    assert first[1].payload == {
        "dataset": "folder",
        "label": "t",
        "split": "train",
        "image_id": "a",
        "root": str(tmp_path.absolute()),
        "path": "a.png",
        "x": 224,
        "y": 0,
        "w": 224,
        "h": 224,
        "tile_size": 224,
    }


@pytest.mark.parametrize(
    "kwargs", [{"tile_size": 8}, {"stride": 0}, {"target_mpp": -1.0}, {"min_tissue": 1.5}]
)
def test_bad_tiling_options_are_clear_errors(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        TilingConfig(**kwargs)
