"""A 10,000 x 10,000 PNG is tiled holding one decoded copy, not several."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 10_000
DECODED_BYTES = SIDE * SIDE * 4  # Pillow stores RGB as 4 bytes a pixel

CHILD = """
import json, sys
from pathlib import Path
from histo.data.records import ImageRecord
from histo.data.tiling import TilingConfig, iter_tiles
path = Path(sys.argv[1])
def high_water():  # VmHWM is per process image; ru_maxrss would inherit the parent's peak
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
before = high_water()
record = ImageRecord(path=path, rel_path=path.name, dataset="folder", label=None, split=None, image_id="big")
count = sum(1 for _ in iter_tiles(record, TilingConfig(), max_pixels=120_000_000))
after = high_water()
print(json.dumps({"tiles": count, "peak_growth": after - before}))
"""


def test_large_png_is_tiled_with_one_decoded_copy(tmp_path: Path) -> None:
    band = np.zeros((SIDE // 10, SIDE, 3), dtype=np.uint8)
    band[...] = (190, 110, 160)
    band[:, ::7] = (120, 60, 140)  # some structure, still quick to compress
    path = tmp_path / "big.png"
    Image.fromarray(np.concatenate([band] * 10)).save(path, compress_level=1)
    del band
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
    )
    figures = json.loads(result.stdout)
    assert figures["tiles"] == (SIDE // 224) ** 2
    assert figures["peak_growth"] < 1.25 * DECODED_BYTES, figures
