"""What an uploaded query image is searched as, and the sentence that says so.

* **Tiles.** The image is cut as ingestion cuts images (``histo.data.tiling.grid_boxes``) and each
  grid box is judged by the ingestion tissue test (on a copy at most ``TISSUE_VIEW`` px wide, so a
  12,000 px image costs one small resize, not 2,800 tile crops). When more boxes hold tissue than a
  query may search (``max_tiles``), they are **spread over the whole image**: every n-th in reading
  order, so rows and columns far apart are all represented, never just the top rows.
* **No tissue, too little.** An image none of whose boxes reaches the tissue threshold (blank,
  grey, transparent, a scanner border), or one smaller than a tile that holds less tissue than a
  tile must (``min_tissue`` of a tile's area, at the index's resolution), is refused with a reason
  instead of answered with confident hits of nothing in particular.
* **Resolution.** The image's µm/px is the one given, else the one its file records (TIFF
  resolution tags or an Aperio ``MPP =`` description, PNG/JPEG density) when it lies in the range
  of microscopy (``PLAUSIBLE_MPP``; 72 or 300 dpi are screen and print densities, not a scan's),
  else **assumed** to be the index's: the tiling's target µm/px where it has one, else unstated
  (tiles of the index were cut at their sources' own pixels, and the query's are too).

:class:`QueryImage` records all of it for the result (``SearchResult.query_image``).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from histo.data.records import Box
from histo.data.tiling import TilingConfig, cut_tile, grid_boxes
from histo.data.tissue import tissue_fraction
from histo.errors import InvalidInputError

#: The widest copy of a query image its tissue is judged on (per-box fractions of a downscaled copy).
TISSUE_VIEW = 2048
#: µm/px a microscope image can have; a density outside it is a screen or print setting.
PLAUSIBLE_MPP = (0.05, 20.0)
_APERIO_MPP = re.compile(r"MPP\s*=\s*([0-9]*\.?[0-9]+)")
_CM, _INCH = 3, 2  # TIFF ResolutionUnit values


@dataclass(frozen=True)
class QueryImage:
    """How an uploaded image was searched: its size, its grid, how many boxes hold tissue, how
    many of those were searched, and its µm/px with where that came from."""

    width: int
    height: int
    grid_tiles: int
    tissue_tiles: int
    searched: int
    mpp: float | None
    #: "given" (by the caller), "file" (recorded in the image) or "assumed" (the index's own)
    mpp_source: str

    @property
    def sampling(self) -> str:
        """ "all" tissue tiles searched, or a "spread" of them over the whole image."""
        return "all" if self.searched == self.tissue_tiles else "spread"

    def sentence(self) -> str:
        """One line for a person: tiles searched of how many, how chosen, at what resolution."""
        tiles = "tile" if self.searched == 1 else "tiles"
        if self.sampling == "all":
            how = f"searched as {self.searched} {tiles} (every tile with tissue"
            how += f" of {self.grid_tiles})" if self.grid_tiles > self.searched else ")"
        else:
            how = (
                f"searched as {self.searched} of its {self.tissue_tiles} tiles with tissue, "
                "spread evenly over the whole image"
            )
        if self.mpp is None:
            mpp = "µm/px assumed to be the indexed images' (not given, not in the file)"
        else:
            source = {"given": "given", "file": "read from the file"}.get(self.mpp_source, "assumed")
            mpp = f"{self.mpp:g} µm/px ({source})"
        return f"{self.width}x{self.height} px image {how}; {mpp}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"sampling": self.sampling, "summary": self.sentence()}


def spread(count: int, most: int) -> list[int]:
    """``most`` indices out of ``range(count)``, evenly spaced from first to last (all if fewer)."""
    if count <= most:
        return list(range(count))
    if most == 1:
        return [0]
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def box_fractions(image: Image.Image, boxes: list[Box]) -> list[float]:
    """The tissue fraction of every box, judged on a copy at most ``TISSUE_VIEW`` px wide."""
    scale = min(1.0, TISSUE_VIEW / max(image.size))
    view = (
        image
        if scale == 1.0
        else image.resize(
            (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))), Image.Resampling.BOX
        )
    )
    pixels = np.asarray(view, dtype=np.uint8)
    fractions = []
    for box in boxes:
        x0, y0 = int(box.x * scale), int(box.y * scale)
        x1 = max(x0 + 1, math.ceil((box.x + box.w) * scale))
        y1 = max(y0 + 1, math.ceil((box.y + box.h) * scale))
        region = pixels[y0:y1, x0:x1]
        fractions.append(tissue_fraction(region, step=max(1, min(region.shape[:2]) // 56)))
    return fractions


def query_tiles(
    image: Image.Image, tiling: TilingConfig, mpp: float | None, mpp_source: str, max_tiles: int
) -> tuple[list[Box], list[np.ndarray], QueryImage]:
    """The boxes and pixels an image is searched with, and what was done (module docstring)."""
    tile, stride = tiling.source_extent(mpp)
    width, height = image.size
    boxes = grid_boxes(width, height, tile, stride)
    fractions = box_fractions(image, boxes)
    tissue = [i for i, fraction in enumerate(fractions) if fraction >= tiling.min_tissue]
    if not tissue:
        raise InvalidInputError(
            f"the query image ({width}x{height} px) holds no tissue: none of its {len(boxes)} "
            f"tile{'s' if len(boxes) > 1 else ''} reaches the tissue threshold ({tiling.min_tissue:.0%} "
            "stained pixels, HISTO_TILING__MIN_TISSUE); give a crop of stained tissue"
        )
    if len(boxes) == 1 and fractions[0] * width * height < tiling.min_tissue * tile * tile:
        raise InvalidInputError(_too_small(width, height, tile, tiling))
    chosen = [tissue[i] for i in spread(len(tissue), max_tiles)]
    info = QueryImage(width, height, len(boxes), len(tissue), len(chosen), mpp, mpp_source)
    size = tiling.tile_size
    return [boxes[i] for i in chosen], [cut_tile(image, boxes[i], size) for i in chosen], info


def _too_small(width: int, height: int, tile: int, tiling: TilingConfig) -> str:
    side = math.ceil(math.sqrt(tiling.min_tissue) * tile)
    hint = (
        "or give its µm/px (--mpp) if it was taken at a lower magnification"
        if tiling.target_mpp is not None
        else "the index's tiles are cut at their sources' own pixels"
    )
    return (
        f"the query image is {width}x{height} px: less tissue than one {tile}x{tile} px tile of the "
        f"index holds; give a larger crop (at least about {side}x{side} px of tissue), {hint}"
    )


def file_mpp(data: bytes) -> float | None:
    """The µm/px an image file records, when it is one a microscope could have (else None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except Exception:  # the decoder proper reports undecodable bytes; here they just record nothing
        return None
    with image:
        value = _tiff_mpp(image) or _density_mpp(image)
    low, high = PLAUSIBLE_MPP
    return value if value is not None and low <= value <= high else None


def _tiff_mpp(image: Image.Image) -> float | None:
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    described = _APERIO_MPP.search(str(tags.get(270, "")))
    if described:
        return float(described.group(1))
    resolution, unit = tags.get(282), tags.get(296, _INCH)
    if not resolution or float(resolution) <= 0:
        return None
    per_unit_um = {_CM: 10_000.0, _INCH: 25_400.0}.get(int(unit))
    return per_unit_um / float(resolution) if per_unit_um else None


def _density_mpp(image: Image.Image) -> float | None:
    dpi = image.info.get("dpi")
    if not dpi or not dpi[0] or float(dpi[0]) <= 0:
        return None
    return 25_400.0 / float(dpi[0])


def resolve_mpp(data: bytes, given: float | None, target_mpp: float | None) -> tuple[float | None, str]:
    """The query's µm/px and its source: given, else read from the file, else assumed to be the
    tiling's target (None without one: the image's pixels are taken as they are)."""
    if given is not None:
        if not (given > 0 and math.isfinite(given)):
            raise InvalidInputError(f"the query image's µm/px must be a positive number, got {given}")
        return float(given), "given"
    found = file_mpp(data)
    return (found, "file") if found is not None else (target_mpp, "assumed")


__all__ = ["PLAUSIBLE_MPP", "QueryImage", "file_mpp", "query_tiles", "resolve_mpp", "spread"]
