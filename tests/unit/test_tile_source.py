"""TileSource: a tile's pixels and its source image, read back from the data set's file."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from histo.data import tile_source
from histo.data.images import load_rgb
from histo.data.records import Box, ImageRecord, tile_payload
from histo.data.tile_source import BOX_COLOUR, TileSource, TileView
from histo.errors import ImageDecodeError, InvalidInputError, NotFoundError, SourceMissingError
from tests.helpers import tissue_array


def _dataset(tmp_path: Path) -> tuple[Path, np.ndarray, dict[str, Any]]:
    """A data set folder with one 300 x 200 PNG, and the payload of its tile at (100, 50, 64, 64)."""
    root = tmp_path / "bach"
    path = root / "Photos" / "Benign" / "b001.png"
    path.parent.mkdir(parents=True)
    pixels = tissue_array(300, 200, seed=3)
    Image.fromarray(pixels).save(path)
    record = ImageRecord(path, "Photos/Benign/b001.png", "bach", "Benign", "train", "b001")
    return root, pixels, tile_payload(record, Box(100, 50, 64, 64), tile_size=64)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_payload_records_the_data_set_root(tmp_path: Path) -> None:
    root, _, payload = _dataset(tmp_path)
    assert payload["root"] == str(root.absolute()) and payload["path"] == "Photos/Benign/b001.png"


def test_tile_view_is_the_box_of_the_source_pixels(tmp_path: Path) -> None:
    _, pixels, payload = _dataset(tmp_path)
    tile = TileSource().render(payload)  # default size: the tile's own (64)
    assert (tile.media_type, tile.width, tile.height) == ("image/png", 64, 64)
    assert np.array_equal(_decode(tile.data), pixels[50:114, 100:164])
    thumb = TileSource().render(payload, size=32, fmt="jpeg")
    assert thumb.media_type == "image/jpeg" and _decode(thumb.data).shape == (32, 32, 3)
    assert thumb.box == Box(0, 0, 32, 32)


def test_source_view_is_downscaled_with_the_box_drawn(tmp_path: Path) -> None:
    _, _, payload = _dataset(tmp_path)
    shown = TileSource().render(payload, view="source", size=150, fmt="png")
    assert (shown.width, shown.height) == (150, 100)  # 300 x 200 at half size
    assert shown.box == Box(50, 25, 32, 32)
    image = _decode(shown.data)
    assert tuple(image[25, 60]) == BOX_COLOUR  # top edge of the box
    assert tuple(image[40, 66]) != BOX_COLOUR  # inside it: the tissue
    whole = TileSource().render(payload, view=TileView.SOURCE, size=2048)
    assert (whole.width, whole.height) == (300, 200)  # never enlarged


def test_decoded_images_are_cached_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, payload = _dataset(tmp_path)
    decoded: list[Path] = []

    def counting_load(source: Path, max_pixels: int) -> Image.Image:
        decoded.append(source)
        return load_rgb(source, max_pixels)

    monkeypatch.setattr(tile_source, "load_rgb", counting_load)
    source = TileSource(cache_images=1)
    first = source.render(payload)
    assert source.render(payload, size=32).width == 32 and source.render(payload).data == first.data
    assert len(decoded) == 1 and source.cached == 1
    path = root / payload["path"]
    Image.fromarray(np.zeros((200, 300, 3), dtype=np.uint8)).save(path)  # changed: read again
    os.utime(path, ns=(1, 1))
    assert _decode(source.render(payload).data).max() == 0 and len(decoded) == 2
    assert source.cached == 1  # the stale entry was evicted


def test_a_moved_data_set_is_one_clear_error_and_roots_fix_it(tmp_path: Path) -> None:
    root, pixels, payload = _dataset(tmp_path)
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    with pytest.raises(SourceMissingError) as caught:
        TileSource().render(payload, name="tile X")
    message = str(caught.value)
    assert "tile X" in message and str(root) in message and "HISTO_DATA_ROOTS" in message
    assert "\n" not in message and isinstance(caught.value, NotFoundError)
    fixed = TileSource({"bach": moved}).render(payload)
    assert np.array_equal(_decode(fixed.data), pixels[50:114, 100:164])


def test_payloads_without_a_root_or_leaving_it_are_refused(tmp_path: Path) -> None:
    _, _, payload = _dataset(tmp_path)
    with pytest.raises(SourceMissingError, match="HISTO_DATA_ROOTS"):
        TileSource().render({k: v for k, v in payload.items() if k != "root"})
    with pytest.raises(NotFoundError, match="outside its data set folder"):
        TileSource().render({**payload, "path": "../../etc/passwd"})
    with pytest.raises(NotFoundError, match="no box"):
        TileSource().render({k: v for k, v in payload.items() if k != "w"})
    with pytest.raises(NotFoundError, match="no source path"):
        TileSource().render({k: v for k, v in payload.items() if k != "path"})


def test_a_corrupt_source_file_is_a_decode_error(tmp_path: Path) -> None:
    root, _, payload = _dataset(tmp_path)
    (root / payload["path"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageDecodeError):
        TileSource().render(payload)


@pytest.mark.parametrize(
    "kwargs", [{"size": 8}, {"size": 4096}, {"size": "64"}, {"fmt": "gif"}, {"view": "thumbnail"}]
)
def test_bad_options_are_input_errors(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    _, _, payload = _dataset(tmp_path)
    with pytest.raises(InvalidInputError):
        TileSource().render(payload, **kwargs)
