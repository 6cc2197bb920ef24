"""Whole-slide images through OpenSlide: levels, µm/px, tissue on a thumbnail, tiles at a resolution.

OpenSlide (``openslide-python`` + ``openslide-bin``, no system library) reads Aperio .svs,
Hamamatsu .ndpi/.vms/.vmu, MIRAX .mrxs, Leica .scn, Ventana .bif, Philips and generic pyramidal
TIFF, among others. A slide is never decoded whole:

* **Tissue** is found on a thumbnail (at most ``THUMBNAIL_SIDE`` px, read from the smallest
  level) with the same chroma test that judges tiles (``histo.data.tissue``); a grid box is kept
  when enough of its footprint on the thumbnail is tissue. Each kept tile is judged again at full
  resolution, as photo tiles are.
* **Tiles** are read one at a time: a box in level-0 pixels is read from the coarsest level that
  still has at least the resolution the tile needs (``get_best_level_for_downsample``) and
  resized to the tile size. Memory is one thumbnail plus one tile, whatever the slide's size.
* **µm/px** comes from the slide (``openslide.mpp-x``, or the TIFF resolution tags for generic
  TIFF); a slide that has none falls back to the data set's nominal value or ``--mpp``, and
  without either is one clear error naming ``--mpp``.

Boxes are in level-0 pixels, so point ids stay deterministic (``dataset/path#x,y,w,h``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histo.data.records import Box, ImageRecord, Tile, point_id, tile_payload
from histo.data.tiling import TilingConfig, grid_boxes
from histo.data.tissue import MIN_BRIGHTNESS, MIN_CHROMA, is_tissue
from histo.errors import ImageDecodeError, InvalidInputError

#: Suffixes that are always slides; .tif/.tiff are slides only when OpenSlide reads them as a
#: pyramid (a plain or single-level TIFF is a photo, read by Pillow as before).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff")
#: The longer side of the thumbnail that tissue is found on.
THUMBNAIL_SIDE = 2048
#: A grid box is kept when this share of ``min_tissue`` of its thumbnail footprint is tissue
#: (loose on purpose: the full-resolution tile test decides; this only skips glass cheaply).
THUMBNAIL_TISSUE_SHARE = 0.5
GLASS = (255, 255, 255)
#: The largest level read whole for a thumbnail (16k px: 1 GiB as RGBA, the worst case).
MAX_THUMBNAIL_SOURCE = 16_384


def _openslide() -> Any:
    import openslide

    return openslide


def is_slide(path: Path) -> bool:
    """Whether ``path`` is read as a whole-slide image (see ``SLIDE_SUFFIXES``)."""
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    openslide = _openslide()
    try:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            return False
        with openslide.OpenSlide(str(path)) as slide:
            return int(slide.level_count) > 1
    except Exception:  # not a TIFF OpenSlide can read: a photo (Pillow reports what is wrong)
        return False


@dataclass(frozen=True)
class SlideInfo:
    """What a slide's header says: level-0 size, the pyramid, µm/px if recorded, the vendor."""

    width: int
    height: int
    levels: tuple[tuple[int, int], ...]
    downsamples: tuple[float, ...]
    mpp: float | None
    vendor: str
    objective: str | None


class Slide:
    """An open slide with clear errors; use ``open_slide`` (a context manager)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        openslide = _openslide()
        if not self.path.is_file():
            raise ImageDecodeError(f"{self.path}: not a regular file")
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            data = self.path.with_suffix("")
            if self.path.suffix.lower() == ".mrxs" and not data.is_dir():
                raise ImageDecodeError(
                    f"{self.path}: a MIRAX slide needs its data folder {data.name}/ beside it; copy it too"
                ) from None
            raise ImageDecodeError(f"{self.path}: not a slide format OpenSlide can read") from None
        except openslide.OpenSlideError as exc:
            reason = _short(exc, self.path)
            raise ImageDecodeError(f"{self.path}: cannot be opened as a slide ({reason})") from None
        self.info = _info(self._slide)

    def close(self) -> None:
        self._slide.close()

    def mpp(self, fallback: float | None = None) -> float:
        """Level-0 µm/px: the slide's own, else ``fallback``, else an error naming ``--mpp``."""
        value = self.info.mpp or fallback
        if value is None:
            raise InvalidInputError(
                f"{self.path}: the slide does not record its resolution (µm/px); give it with --mpp "
                "(e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x)"
            )
        return value

    def thumbnail(self, side: int = THUMBNAIL_SIDE) -> Image.Image:
        """The whole slide, its longer side at most ``side`` px, RGB on white.

        Read from the coarsest level that still has half of ``side`` px (else level 0), so memory
        is bounded by a small level, not by OpenSlide's choice for the downsample (which for a
        100,000 px slide at 4x steps decodes the 6,250 px level: 150 MB)."""
        level = self._thumbnail_level(side)
        width, height = self.info.levels[level]
        if max(width, height) > MAX_THUMBNAIL_SOURCE:
            raise ImageDecodeError(
                f"{self.path}: its smallest level is {width}x{height} px; a slide needs a reduced level "
                f"of at most {MAX_THUMBNAIL_SOURCE} px to find its tissue (re-save it as a pyramid)"
            )
        try:
            region = self._slide.read_region((0, 0), level, (width, height))
        except Exception as exc:  # a level OpenSlide cannot decode
            reason = _short(exc, self.path)
            raise ImageDecodeError(f"{self.path}: cannot read its thumbnail ({reason})") from None
        thumb = _on_glass(region)
        thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
        return thumb

    def _thumbnail_level(self, side: int) -> int:
        for level in range(len(self.info.levels) - 1, -1, -1):
            if max(self.info.levels[level]) >= side // 2:
                return level
        return 0

    def read(self, box: Box, size: int) -> np.ndarray:
        """The level-0 ``box`` as a ``size`` x ``size`` RGB tile, read from the nearest level."""
        level = self.level_for(box, size)
        scale = self.info.downsamples[level]
        extent = (max(1, math.ceil(box.w / scale)), max(1, math.ceil(box.h / scale)))
        try:
            region = self._slide.read_region((box.x, box.y), level, extent)
        except Exception as exc:
            raise ImageDecodeError(
                f"{self.path}: cannot read level {level} at {box.x},{box.y} ({_short(exc, self.path)})"
            ) from None
        tile = _on_glass(region)
        if tile.size != (size, size):
            tile = tile.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(tile, dtype=np.uint8)

    def level_for(self, box: Box, size: int) -> int:
        """The coarsest level whose resolution still covers ``box`` at ``size`` px."""
        wanted = max(box.w, box.h) / size
        return int(self._slide.get_best_level_for_downsample(max(1.0, wanted)))

    def tissue_boxes(self, config: TilingConfig, mpp: float, min_tissue: float | None = None) -> list[Box]:
        """Level-0 grid boxes at the tiling's resolution whose thumbnail footprint holds tissue."""
        tile, stride = config.source_extent(mpp)
        boxes = grid_boxes(self.info.width, self.info.height, tile, stride)
        if not boxes:
            return []
        thumb = np.asarray(self.thumbnail(), dtype=np.int16)
        mask = _tissue_mask(thumb)
        sx, sy = mask.shape[1] / self.info.width, mask.shape[0] / self.info.height
        area = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        need = THUMBNAIL_TISSUE_SHARE * (config.min_tissue if min_tissue is None else min_tissue)
        kept = []
        for box in boxes:
            x0, y0 = int(box.x * sx), int(box.y * sy)
            x1 = max(x0 + 1, min(mask.shape[1], math.ceil((box.x + box.w) * sx)))
            y1 = max(y0 + 1, min(mask.shape[0], math.ceil((box.y + box.h) * sy)))
            inside = area[y1, x1] - area[y0, x1] - area[y1, x0] + area[y0, x0]
            if inside >= need * (x1 - x0) * (y1 - y0) and inside > 0:
                kept.append(box)
        return kept


@contextmanager
def open_slide(path: Path) -> Iterator[Slide]:
    slide = Slide(path)
    try:
        yield slide
    finally:
        slide.close()


def plan_slide(record: ImageRecord, config: TilingConfig) -> tuple[ImageRecord, list[Box]]:
    """The record with the slide's level-0 µm/px, and its tissue boxes (level-0 pixels).

    Reads the header and one thumbnail. A slide without a resolution (and no fallback in
    ``record.mpp``) or without tissue is an error with one line saying why."""
    with open_slide(record.path) as slide:
        mpp = slide.mpp(record.mpp)
        boxes = slide.tissue_boxes(config, mpp)
    if not boxes:
        raise ImageDecodeError(f"{record.path}: no tissue found on the slide's thumbnail; nothing to index")
    # a slide is its own leakage unit and slide-search result, whatever the layout named it
    return dataclasses.replace(record, mpp=mpp, slide_id=record.slide_id or record.image_id), boxes


def slide_tiles(
    record: ImageRecord, boxes: Sequence[Box], config: TilingConfig, unreadable: list[str] | None = None
) -> Iterator[Tile]:
    """The tissue tiles of ``boxes`` (level-0 pixels) of a planned slide record, read one by one;
    payloads add the pyramid level each tile was read from. A tile OpenSlide cannot decode is
    skipped and described in ``unreadable`` (when given; else the error is raised): the rest of
    the slide is still indexed. OpenSlide refuses every call on a handle after an error, so the
    slide is opened again after one."""
    slide = Slide(record.path)
    try:
        for box in boxes:
            try:
                pixels = slide.read(box, config.tile_size)
            except ImageDecodeError as exc:
                if unreadable is None:
                    raise
                unreadable.append(str(exc).removeprefix(f"{record.path}: "))
                slide.close()
                slide = Slide(record.path)
                continue
            if not is_tissue(pixels, config.min_tissue):
                continue
            payload = tile_payload(record, box, config.tile_size)
            payload["level"] = slide.level_for(box, config.tile_size)
            yield Tile(
                id=point_id(record.dataset, record.rel_path, box), box=box, pixels=pixels, payload=payload
            )
    finally:
        slide.close()


def slide_montage(
    path: Path, config: TilingConfig, fallback_mpp: float | None = None, max_tiles: int = 64
) -> bytes:
    """A slide as a query: up to ``max_tiles`` of its tissue tiles (spread evenly over them), read
    at the tiling's resolution and laid edge to edge in a PNG grid of tile-size cells. Searched
    as an image, it is cut back into exactly these tiles (when the stride is the tile size)."""
    import io

    record = ImageRecord(path, path.name, "query", None, None, path.stem, mpp=fallback_mpp)
    planned, boxes = plan_slide(record, config)
    if len(boxes) > max_tiles:
        boxes = [boxes[round(i * (len(boxes) - 1) / (max_tiles - 1))] for i in range(max_tiles)]
    tiles = [t.pixels for t in slide_tiles(planned, boxes, config)] or [
        t for t in (_first(planned, boxes, config),) if t is not None
    ]
    size = config.tile_size
    cols = min(8, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.full((rows * size, cols * size, 3), GLASS, dtype=np.uint8)
    for n, pixels in enumerate(tiles):
        y, x = divmod(n, cols)
        sheet[y * size : (y + 1) * size, x * size : (x + 1) * size] = pixels
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue()


def _first(record: ImageRecord, boxes: Sequence[Box], config: TilingConfig) -> np.ndarray | None:
    """The first box's pixels, when no tile passed the full-resolution tissue test."""
    with open_slide(record.path) as slide:
        return slide.read(boxes[0], config.tile_size) if boxes else None


def _info(slide: object) -> SlideInfo:
    props = dict(slide.properties)  # type: ignore[attr-defined]
    mpp = _float(props.get("openslide.mpp-x"))
    width, height = slide.dimensions  # type: ignore[attr-defined]
    return SlideInfo(
        width=int(width),
        height=int(height),
        levels=tuple((int(w), int(h)) for w, h in slide.level_dimensions),  # type: ignore[attr-defined]
        downsamples=tuple(float(d) for d in slide.level_downsamples),  # type: ignore[attr-defined]
        mpp=mpp if mpp and mpp > 0 and math.isfinite(mpp) else None,
        vendor=str(props.get("openslide.vendor", "unknown")),
        objective=props.get("openslide.objective-power"),
    )


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _on_glass(image: Image.Image) -> Image.Image:
    """RGBA from OpenSlide (transparent outside the scanned area) laid on white glass."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    glass = Image.new("RGB", rgba.size, GLASS)
    glass.paste(rgba, mask=rgba.getchannel("A"))
    return glass


def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Per pixel: stained tissue (the tile test's chroma rule), as booleans."""
    high = rgb.max(axis=2)
    return ((high - rgb.min(axis=2)) >= MIN_CHROMA) & (high >= MIN_BRIGHTNESS)


def _short(exc: BaseException, path: Path) -> str:
    text = (str(exc).splitlines() or [type(exc).__name__])[0].replace(str(path), "the file")
    return text[:160] or type(exc).__name__


__all__ = [
    "SLIDE_SUFFIXES",
    "THUMBNAIL_SIDE",
    "Slide",
    "SlideInfo",
    "is_slide",
    "open_slide",
    "plan_slide",
    "slide_montage",
    "slide_tiles",
]
