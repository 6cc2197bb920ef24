"""Decoding: odd modes become RGB, bad files become one-line ImageDecodeErrors, bombs are refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo.data.images import load_rgb, open_header
from histo.errors import ImageDecodeError, ImageTooLargeError
from tests.helpers import tissue_array, write_image


def _png_header_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes whose header promises width x height RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_bomb(100_000, 100_000))
    with pytest.raises(ImageTooLargeError, match="HISTO_IMAGES__MAX_PIXELS"):
        open_header(path)
    with pytest.raises(ImageTooLargeError):
        load_rgb(path.read_bytes())


def test_limit_is_a_setting_not_pillows_default(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", 100, 100)
    with pytest.raises(ImageTooLargeError):
        load_rgb(path, max_pixels=9_999)
    assert load_rgb(path, max_pixels=10_000).size == (100, 100)
    # above Pillow's own 179 Mpx error threshold, judged by our limit only
    with pytest.raises(ImageTooLargeError, match="200,000,000"):
        open_header(
            tmp_path.joinpath("b.png").write_bytes(_png_header_bomb(20_000, 10_000)) and tmp_path / "b.png",
            max_pixels=199_999_999,
        )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"hello, I am not a picture\n", "not a recognised image format"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=message):
        load_rgb(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_files(tmp_path: Path, suffix: str) -> None:
    whole = write_image(tmp_path / f"whole{suffix}", 256, 256).read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageDecodeError, match=r"truncated or corrupt|cannot be read"):
        load_rgb(path)


def test_broken_symlink_and_empty_upload(tmp_path: Path) -> None:
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="broken symbolic link"):
        load_rgb(link)
    with pytest.raises(ImageDecodeError, match="empty upload"):
        load_rgb(b"")


def _encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_odd_modes_become_rgb() -> None:
    rgb = Image.fromarray(tissue_array(32, 16))
    gray16 = Image.fromarray(np.arange(32 * 16, dtype=np.uint16).reshape(16, 32) * 128)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)
    cases = {
        "L": _encode(rgb.convert("L"), "PNG"),
        "P": _encode(rgb.convert("P"), "PNG"),
        "CMYK": _encode(rgb.convert("CMYK"), "JPEG"),
        "I;16": _encode(gray16, "PNG"),
        "RGBA": _encode(rgba, "PNG"),
        "LA": _encode(rgb.convert("LA"), "PNG"),
    }
    for mode, data in cases.items():
        image = load_rgb(data)
        assert (image.mode, image.size) == ("RGB", (32, 16)), mode
    assert np.asarray(load_rgb(cases["RGBA"])).min() == 255  # transparent lays on white
    sixteen = np.asarray(load_rgb(cases["I;16"]))[..., 0]
    assert sixteen[0, 0] == 0 and sixteen.max() >= 250  # scaled from 16 bits, not clipped


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(tissue_array(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    upright = load_rgb(_encode(image, "JPEG", exif=exif))
    assert upright.size == (20, 40)
