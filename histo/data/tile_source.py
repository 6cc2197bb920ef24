"""A tile's pixels, read back from its data set's source file, for people to look at.

The index stores vectors and a payload, not pixels: a tile's payload names its data set root (as
it was at ingestion), its path under that root and its box. ``TileSource`` reads the file, crops
the box (the ``tile`` view) or downscales the whole image with the box drawn on it (the ``source``
view), and encodes PNG or JPEG. It is what the web page's thumbnails and the ``GetTile`` RPC show.

* **No request path reaches the file system**: callers hand over a stored payload (found by point
  id), and a payload path that would leave its root is refused.
* **A moved data set is one clear error** (``SourceMissingError``) that names the root recorded
  at ingestion and the way out: ``HISTO_DATA_ROOTS='{"bach": "/new/place"}'`` maps a data set to
  where it lives now (``roots`` here).
* **A small cache** of decoded images (``cache_images``, least recently used): a results page
  shows many tiles of few images, and decoding a 2048 x 1536 TIFF costs ~50 ms.
"""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from histo.data.images import DEFAULT_MAX_PIXELS, load_rgb
from histo.data.records import Box
from histo.data.slides import is_slide as _is_slide
from histo.data.slides import open_slide
from histo.errors import InvalidInputError, NotFoundError, SourceMissingError

MIN_SIZE = 16
MAX_SIZE = 2048
#: The longer side of a ``source`` view when the caller gives none.
DEFAULT_SOURCE_SIZE = 1024
DEFAULT_CACHE_IMAGES = 8
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
BOX_COLOUR = (0, 229, 255)


class TileView(StrEnum):
    """What to render: the tile itself, or its whole source image with the tile's box drawn."""

    TILE = "tile"
    SOURCE = "source"


@dataclass(frozen=True, slots=True)
class TileImage:
    """Encoded image bytes and what a client needs to show them; ``box`` is the tile's box in
    the returned image's pixels (the whole image for the ``tile`` view)."""

    data: bytes
    media_type: str
    width: int
    height: int
    box: Box


def check_size(size: object) -> int | None:
    """``size`` (the longer side in pixels) as an int in MIN_SIZE..MAX_SIZE, or None for the default."""
    if size is None or size == 0:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidInputError(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE} px, got {size!r}")
    return size


def check_view(view: object) -> TileView:
    """``tile`` or ``source`` as a ``TileView``."""
    try:
        return TileView(str(view))
    except ValueError:
        raise InvalidInputError(f"view must be tile or source, got {view!r}") from None


def check_format(fmt: object) -> str:
    """``png`` or ``jpeg`` (``jpg`` accepted; empty means png)."""
    name = str(fmt or "png").lower()
    name = "jpeg" if name == "jpg" else name
    if name not in MEDIA_TYPES:
        raise InvalidInputError(f"format must be png or jpeg, got {fmt!r}")
    return name


class TileSource:
    """Render indexed tiles from their source files (see the module docstring)."""

    def __init__(
        self,
        roots: Mapping[str, Path | str] | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_images: int = DEFAULT_CACHE_IMAGES,
    ) -> None:
        self.roots = {name: Path(root) for name, root in (roots or {}).items()}
        self.max_pixels = max_pixels
        self._cache: OrderedDict[tuple[str, int, int], Image.Image] = OrderedDict()
        self._capacity = max(0, cache_images)
        self._lock = threading.Lock()

    def render(
        self,
        payload: Mapping[str, Any],
        *,
        view: TileView | str = TileView.TILE,
        size: int | None = None,
        fmt: str = "png",
        name: str = "the tile",
    ) -> TileImage:
        """The ``view`` of the tile ``payload`` describes, its longer side ``size`` px (default:
        the tile's own size, or DEFAULT_SOURCE_SIZE for the source view), encoded as ``fmt``."""
        view = check_view(view)
        fmt = check_format(fmt)
        size = check_size(size)
        if view is TileView.TILE:
            out = self.tile_pixels(payload, size, name)
            shown = Box(0, 0, out.width, out.height)
        else:
            box = _box_of(payload, name)
            out, scale = self.thumbnail(payload, size or DEFAULT_SOURCE_SIZE, name)
            shown = Box(
                round(box.x * scale), round(box.y * scale), round(box.w * scale), round(box.h * scale)
            )
            out = _draw_box(out.copy(), shown)
        return TileImage(_encode(out, fmt), MEDIA_TYPES[fmt], out.width, out.height, shown)

    def tile_pixels(
        self, payload: Mapping[str, Any], size: int | None = None, name: str = "the tile"
    ) -> Image.Image:
        """The tile's box cut from its source image (a slide: read from its nearest pyramid
        level), its longer side ``size`` px (default: the tile's own size)."""
        box = _box_of(payload, name)
        path = self.path_of(payload, name)
        longest = size or int(payload.get("tile_size") or max(box.w, box.h))
        if is_slide(path):
            with open_slide(path) as slide:
                return Image.fromarray(slide.read(box, longest))
        crop = self._image(path).crop((box.x, box.y, box.x + box.w, box.y + box.h))
        return _fit(crop, longest)

    def thumbnail(
        self, payload: Mapping[str, Any], size: int, name: str = "the tile"
    ) -> tuple[Image.Image, float]:
        """The tile's whole source image, its longer side at most ``size`` px (never enlarged),
        and the scale from source (level-0) pixels to it."""
        path = self.path_of(payload, name)
        if is_slide(path):
            with open_slide(path) as slide:
                thumb = slide.thumbnail(size)
                return thumb, thumb.width / slide.info.width
        image = self._image(path)
        out = _fit(image, size, upscale=False)
        return out, out.width / image.width

    def path_of(self, payload: Mapping[str, Any], name: str = "the tile") -> Path:
        """The source file of a payload: its data set's root (``roots`` first, else the one
        recorded at ingestion) joined with its relative path; ``SourceMissingError`` if absent."""
        dataset = str(payload.get("dataset") or "")
        rel = payload.get("path")
        if not isinstance(rel, str) or not rel:
            raise NotFoundError(f"{name} has no source path in its payload; it cannot be shown")
        recorded = payload.get("root")
        root = self.roots.get(dataset) or (Path(recorded) if isinstance(recorded, str) and recorded else None)
        if root is None:
            raise SourceMissingError(
                f"{name} of data set {dataset!r} was ingested without its folder being recorded; "
                f'set HISTO_DATA_ROOTS=\'{{"{dataset}": "/path/to/{dataset}"}}\' or re-ingest it'
            )
        path = (root / rel).absolute()
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise NotFoundError(f"{name} has a source path outside its data set folder ({rel!r})")
        if not path.is_file():
            raise SourceMissingError(
                f"the source image of {name} is missing: {path} (data set {dataset!r}, folder {root}); "
                f'if the folder moved, set HISTO_DATA_ROOTS=\'{{"{dataset}": "/new/place"}}\' '
                "for the server and restart it"
            )
        return path

    def _image(self, path: Path) -> Image.Image:
        """The decoded RGB image, from the cache when the file has not changed."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        image = load_rgb(path, self.max_pixels)
        with self._lock:
            self._cache[key] = image
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return image

    @property
    def cached(self) -> int:
        """Decoded images held now."""
        return len(self._cache)


@functools.lru_cache(maxsize=4096)
def _slide_file(path: str, mtime_ns: int) -> bool:
    """``is_slide`` once per file version: a results page asks for many tiles of few files, and for
    a TIFF the answer means opening it with OpenSlide."""
    return _is_slide(Path(path))


def is_slide(path: Path) -> bool:
    return _slide_file(str(path), path.stat().st_mtime_ns)


def _box_of(payload: Mapping[str, Any], name: str) -> Box:
    try:
        box = Box(*(int(payload[k]) for k in ("x", "y", "w", "h")))
    except (KeyError, TypeError, ValueError):
        raise NotFoundError(f"{name} has no box (x, y, w, h) in its payload; it cannot be shown") from None
    if box.w <= 0 or box.h <= 0 or box.x < 0 or box.y < 0:
        raise NotFoundError(f"{name} has an empty or negative box {box}; it cannot be shown")
    return box


def _fit(image: Image.Image, longest: int, upscale: bool = True) -> Image.Image:
    """``image`` scaled so its longer side is ``longest`` px (never up unless ``upscale``)."""
    scale = longest / max(image.width, image.height)
    if scale >= 1 and not upscale:
        return image.copy()
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


def _draw_box(image: Image.Image, box: Box) -> Image.Image:
    width = max(2, round(max(image.size) / 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((box.x, box.y, box.x + box.w - 1, box.y + box.h - 1), outline=BOX_COLOUR, width=width)
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=88)
    else:
        image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "TileImage",
    "TileSource",
    "TileView",
    "check_format",
    "check_size",
    "check_view",
]
