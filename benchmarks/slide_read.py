"""Whole-slide reading: tiles per second from a pyramid (OpenSlide) against the same tiles cut from
a PNG of the same pixels (Pillow, as photos are read), and peak memory on a 100,000 x 100,000 px
pyramid.

* ``tiles_per_s``: a synthetic 4096 x 4096 slide (two tissue regions), written once as a tiled
  zlib pyramid and once as a flat PNG. The same boxes (the tissue boxes ``plan_slide`` finds, 224
  px at level 0) are read with ``Slide.read`` (OpenSlide, one region per tile) and with
  ``load_rgb`` + ``cut_tile`` (the photo path: decode the whole file once, cut every box).
  Median of 3 rounds each; ratio pyramid / PNG. A second pair reads at 2 µm/px (4x coarser:
  the pyramid reads level 1, the PNG path decodes level 0 and resizes).
* ``big``: a 100,000 x 100,000 px pyramid (0.25 µm/px, 3 tissue regions of 2048 px at known
  places, glass elsewhere; level k generated directly) is planned (thumbnail, tissue boxes over
  the whole grid) and its tissue tiles read, in a fresh process whose peak resident memory
  (``VmHWM``) is reported beside the 28 GiB the decoded level 0 would take.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Row, ratio, rss_mib
from histo.data.images import load_rgb
from histo.data.records import ImageRecord
from histo.data.slides import open_slide, plan_slide, slide_tiles
from histo.data.synth import render_image
from histo.data.synth_slides import GLASS_RGB, TILE, canvas_tiles, slide_canvas, to_png, write_pyramid
from histo.data.tiling import TilingConfig, cut_tile

BIG = 100_000
BIG_REGIONS = ((10_240, 20_480), (51_200, 61_440), (81_920, 8_192))  # (x, y) of 2048 px tissue squares
REGION = 2048


def _record(path: Path, mpp: float) -> ImageRecord:
    return ImageRecord(path, path.name, "bench", None, None, path.stem, mpp=mpp)


def _rate(read: Any, rounds: int = 3) -> tuple[float, int]:
    """Median tiles/s of ``read()`` (which returns the tiles) over ``rounds``."""
    rates, count = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = len(read())
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates), count


def tiles_per_second(folder: Path, side: int) -> dict[str, Any]:
    canvas, _ = slide_canvas("bach", "InSitu", seed=0, slide=0, size=(side, side))
    pyramid, flat = folder / "slide.tiff", folder / "slide.png"
    write_pyramid(pyramid, side, side, canvas_tiles(canvas), mpp=0.5)
    to_png(canvas, flat)
    figures: dict[str, Any] = {"side_px": side}
    for name, config in (("level0", TilingConfig()), ("2mpp", TilingConfig(target_mpp=2.0, min_tissue=0.3))):
        _, boxes = plan_slide(_record(pyramid, 0.5), config)

        def from_pyramid(boxes: list = boxes, config: TilingConfig = config) -> list:
            with open_slide(pyramid) as slide:
                return [slide.read(box, config.tile_size) for box in boxes]

        def from_png(boxes: list = boxes, config: TilingConfig = config) -> list:
            image = load_rgb(flat)
            return [cut_tile(image, box, config.tile_size) for box in boxes]

        slide_rate, read = _rate(from_pyramid)
        png_rate, cut = _rate(from_png)
        assert read == cut == len(boxes)
        figures[name] = {
            "tiles": len(boxes),
            "pyramid_tiles_per_s": round(slide_rate, 1),
            "png_tiles_per_s": round(png_rate, 1),
            "ratio": ratio(slide_rate, png_rate),
        }
    return figures


def write_big(path: Path) -> None:
    """The 100k x 100k pyramid: glass, and 3 tissue squares at BIG_REGIONS."""
    tissue = render_image("bach", "Invasive", 0, 0, (REGION, REGION))
    glass = np.empty((TILE, TILE, 3), dtype=np.uint8)
    glass[:] = GLASS_RGB

    def tile_at(level: int, x: int, y: int) -> np.ndarray:
        scale = 4**level
        out = None
        for rx, ry in BIG_REGIONS:
            sx, sy = rx // scale, ry // scale
            size = REGION // scale
            if x + TILE <= sx or sx + size <= x or y + TILE <= sy or sy + size <= y:
                continue
            small = tissue[::scale, ::scale] if scale > 1 else tissue
            out = glass.copy() if out is None else out
            x0, y0 = max(x, sx), max(y, sy)
            x1, y1 = min(x + TILE, sx + size), min(y + TILE, sy + size)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = small[y0 - sy : y1 - sy, x0 - sx : x1 - sx]
        return glass if out is None else out

    write_pyramid(path, BIG, BIG, lambda x, y: tile_at(0, x, y), mpp=0.25, level_tile_of=tile_at)


def read_big(path: str) -> dict[str, Any]:
    """Plan and read the big pyramid (run in a fresh process: its VmHWM is the figure, beside the
    resident memory of the same process before it opened the slide: Python, numpy, OpenSlide)."""
    before = rss_mib()
    started = time.perf_counter()
    planned, boxes = plan_slide(_record(Path(path), 0.25), TilingConfig())
    planned_s = time.perf_counter() - started
    tiles = sum(1 for _ in slide_tiles(planned, boxes, TilingConfig()))
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return {
        "grid_boxes": (BIG // 224) ** 2,
        "tissue_boxes": len(boxes),
        "tissue_tiles": tiles,
        "plan_s": round(planned_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_before_mib": round(before, 1),
    }


def big_pyramid(folder: Path) -> dict[str, Any]:
    path = folder / "big.tiff"
    started = time.perf_counter()
    write_big(path)
    written_s = time.perf_counter() - started
    code = f"import json, benchmarks.slide_read as b; print(json.dumps(b.read_big({str(path)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    decoded = BIG * BIG * 3 / 2**20
    return {
        **figures,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "write_s": round(written_s, 1),
        "decoded_level0_mib": round(decoded),
        "peak_over_decoded": ratio(figures["peak_rss_mib"], decoded, 5),
    }


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="histo-slide-read-") as tmp:
        folder = Path(tmp)
        report: dict[str, Any] = {"tiles_per_s": tiles_per_second(folder, 2048 if quick else 4096)}
        if not quick:
            report["big"] = big_pyramid(folder)
    return report


def rows(report: dict[str, Any]) -> list[Row]:
    out = []
    for name in ("level0", "2mpp"):
        f = report["tiles_per_s"][name]
        out.append(
            Row(
                f"tiles/s from a pyramid, {name} ({f['tiles']} tiles)",
                str(f["pyramid_tiles_per_s"]),
                f"{f['png_tiles_per_s']} from a PNG",
                str(f["ratio"]),
            )
        )
    if "big" in report:
        b = report["big"]
        out.append(
            Row(
                f"peak RSS, 100k x 100k pyramid ({b['tissue_tiles']} tiles of {b['grid_boxes']} boxes)",
                f"{b['peak_rss_mib']} MiB ({b['rss_before_mib']} MiB before opening it)",
                f"{b['decoded_level0_mib']} MiB decoded level 0",
                str(b["peak_over_decoded"]),
            )
        )
    return out


__all__ = ["rows", "run"]
