"""Cut images into tiles: a regular grid in source pixels, background dropped, target resolution.

Resampling happens per tile, never on the whole image: a tile of ``round(tile_size / scale)``
source pixels is cut and resized to ``tile_size``. Together with ``load_rgb`` holding a single
decoded copy, a 10,000 x 10,000 PNG costs one decoded image plus one tile of memory.

Grid rule: tiles start at 0, step by ``stride`` and must fit entirely inside the image; the
remainder strip at the right and bottom edges is dropped. An image smaller than one tile in a
dimension yields a single tile spanning that whole dimension (small RoIs are still indexed), but an
image with a side under ``MIN_IMAGE_SIDE`` px is refused with a reason (``check_tileable``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from histo.data.images import DEFAULT_MAX_PIXELS, load_rgb
from histo.data.records import Box, ImageRecord, Tile, point_id, tile_payload
from histo.data.tissue import is_tissue
from histo.errors import ImageDecodeError, InvalidInputError

#: The shortest image side that is tiled, in source pixels (the smallest tile size allowed). A
#: thinner image (a 1x1 thumbnail, a 4000x8 strip) holds no tissue structure (a nucleus alone is
#: ~10 px at 40x) and would be stretched many times over into a tile of smeared colour, so
#: ingestion reports it and a query refuses it instead of indexing or searching that smear.
MIN_IMAGE_SIDE = 16
#: The largest tile edge (as ``HISTO_TILING__TILE_SIZE`` allows): every tile is resized to this,
#: so ``--tile-size 100000`` would allocate 30 GB per tile instead of failing with a reason.
MAX_TILE_SIZE = 4096
#: The most a tile may be upsampled to reach the target resolution. Beyond it a tile covers a
#: handful of source pixels, and a query with an absurd ``mpp`` would cut one tile per source
#: pixel (a million for a 1000 x 1000 upload): refused with a reason instead.
MAX_UPSAMPLING = 16.0


@dataclass(frozen=True)
class TilingConfig:
    """Tile size and stride in output pixels, an optional target µm/px, and the tissue threshold."""

    tile_size: int = 224
    stride: int | None = None
    target_mpp: float | None = None
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        if not 16 <= self.tile_size <= MAX_TILE_SIZE:
            raise InvalidInputError(
                f"tile size {self.tile_size} is out of range; use 16 to {MAX_TILE_SIZE} px"
            )
        if self.stride is not None and self.stride < 1:
            raise InvalidInputError(f"stride {self.stride} must be a positive number of pixels")
        if self.target_mpp is not None and not (self.target_mpp > 0 and math.isfinite(self.target_mpp)):
            # NaN passed a plain "<= 0" test and then failed deep inside round() while tiling
            raise InvalidInputError(
                f"target resolution {self.target_mpp} µm/px must be a positive finite number"
            )
        if not 0.0 <= self.min_tissue <= 1.0:
            raise InvalidInputError(f"min tissue fraction {self.min_tissue} must lie in 0..1")

    @property
    def step(self) -> int:
        return self.stride or self.tile_size

    def scale_for(self, source_mpp: float | None) -> float:
        """Output pixels per source pixel; 1 when either resolution is unknown."""
        if self.target_mpp is None or source_mpp is None:
            return 1.0
        return source_mpp / self.target_mpp

    def source_extent(self, source_mpp: float | None) -> tuple[int, int]:
        """Tile size and stride measured in source pixels; refuses more than ``MAX_UPSAMPLING``."""
        scale = self.scale_for(source_mpp)
        if not (0 < scale <= MAX_UPSAMPLING):
            raise InvalidInputError(
                f"a source at {source_mpp} µm/px tiled at {self.target_mpp} µm/px would be upsampled "
                f"{scale:g}x (at most {MAX_UPSAMPLING:g}x); check the µm/px values"
            )
        return _extent(self.tile_size, scale), _extent(self.step, scale)


def _extent(pixels: int, scale: float) -> int:
    """``pixels`` output pixels in source pixels: at least 1, and finite however small ``scale``
    is (an extent beyond any image's side means the same as "the whole side")."""
    return max(1, round(min(pixels / scale, float(2**40))))


def grid_positions(length: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """(start, extent) of every tile along one axis of ``length`` pixels."""
    if length <= 0:
        return []
    if length < tile:
        return [(0, length)]
    return [(start, tile) for start in range(0, length - tile + 1, stride)]


def grid_boxes(width: int, height: int, tile: int, stride: int) -> list[Box]:
    """Every grid box of an image, row by row."""
    return [
        Box(x, y, w, h)
        for y, h in grid_positions(height, tile, stride)
        for x, w in grid_positions(width, tile, stride)
    ]


def check_tileable(size: tuple[int, int], name: str) -> None:
    """Refuse an image whose shorter side is under ``MIN_IMAGE_SIDE`` (see there why)."""
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(
            f"{name}: image is {width}x{height} px, too small to tile "
            f"(each side needs at least {MIN_IMAGE_SIDE} px)"
        )


def boxes_for(size: tuple[int, int], record: ImageRecord, config: TilingConfig) -> list[Box]:
    """Grid boxes for an image of ``size`` (width, height), before the tissue test."""
    tile, stride = config.source_extent(record.mpp)
    return grid_boxes(size[0], size[1], tile, stride)


def cut_tile(image: Image.Image, box: Box, tile_size: int) -> np.ndarray:
    """The box's pixels resized to tile_size x tile_size (only when they differ)."""
    crop = image.crop((box.x, box.y, box.x + box.w, box.y + box.h))
    if crop.size != (tile_size, tile_size):
        crop = crop.resize((tile_size, tile_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(crop, dtype=np.uint8)


def iter_tiles(
    record: ImageRecord, config: TilingConfig, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[Tile]:
    """Decode one image and yield its tissue tiles with ids and payloads."""
    image = load_rgb(record.path, max_pixels)
    try:
        check_tileable(image.size, str(record.path))
        for box in boxes_for(image.size, record, config):
            pixels = cut_tile(image, box, config.tile_size)
            if not is_tissue(pixels, config.min_tissue):
                continue
            yield Tile(
                id=point_id(record.dataset, record.rel_path, box),
                box=box,
                pixels=pixels,
                payload=tile_payload(record, box, config.tile_size),
            )
    finally:
        image.close()
