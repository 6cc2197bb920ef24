"""One folder-layout data set of good, odd and broken images, with the outcome each must have.

Shared by the CLI ingestion test and the gRPC upload test, so both judge the very same bytes.
``matrix()`` returns the cases; ``write_matrix()`` lays them out as ``<root>/<label>/<name>``
(dataset ``folder``). Every case says what ingestion must do with it ("ingested" with a known
upright size, or "reported" with a reason fragment) and what a ``Search`` upload of its bytes
must answer (hits, or a status code and message fragment); cases without bytes (a broken link,
an unreadable file) exist only on disk.

Sizes are judged against a tile of ``TILE`` px and the pixel limit ``MAX_PIXELS`` (set through
``HISTO_IMAGES__MAX_PIXELS`` or the engine's ``max_pixels``), which keeps the bomb a few bytes.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tests.helpers import tissue_array

TILE = 64
MAX_PIXELS = 1_000_000
GOOD_LABEL = "tissue"
ODD_LABEL = "odd"

Outcome = Literal["ingested", "reported"]
Kind = Literal["file", "symlink", "unreadable"]


@dataclass(frozen=True)
class Case:
    """One input file and what must become of it, on disk and as an upload."""

    name: str
    label: str
    outcome: Outcome
    reason: str = ""  # fragment of the ingestion failure reason ("reported" only)
    data: bytes = b""
    kind: Kind = "file"
    size: tuple[int, int] | None = None  # upright (width, height) of an ingested image
    upload_code: str | None = None  # gRPC status name of an upload; None: it returns hits
    upload_reason: str = ""

    @property
    def rel_path(self) -> str:
        return f"{self.label}/{self.name}"

    @property
    def uploadable(self) -> bool:
        """Only real files have bytes to upload."""
        return self.kind == "file"


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def tissue(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(tissue_array(width, height, seed))


def png_header_bomb(width: int, height: int) -> bytes:
    """A few dozen bytes whose PNG header promises ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    """A ``width`` x ``height`` JPEG whose EXIF orientation 6 says: display it turned 90° (so upright
    it is ``height`` x ``width``)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(tissue(width, height, seed=7), "JPEG", quality=90, exif=exif.tobytes())


def gray16(width: int, height: int) -> bytes:
    """A 16-bit grayscale PNG (Pillow mode I;16) using the upper half of the range."""
    values = np.random.default_rng(3).integers(20_000, 60_000, size=(height, width), dtype=np.uint16)
    return encode(Image.fromarray(values), "PNG")


def _good() -> list[Case]:
    sizes = {"good_a.png": (2 * TILE, 2 * TILE), "good_b.jpg": (2 * TILE, TILE), "good_c.tif": (TILE, TILE)}
    formats = {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF"}
    return [
        Case(
            name,
            GOOD_LABEL,
            "ingested",
            data=encode(tissue(*size, seed=i), formats[Path(name).suffix]),
            size=size,
        )
        for i, (name, size) in enumerate(sizes.items())
    ]


def _convertible() -> list[Case]:
    base = tissue(TILE, 2 * TILE, seed=5)
    rgba = np.dstack([np.asarray(tissue(TILE, TILE, 6)), np.full((TILE, TILE), 200, np.uint8)])
    return [
        Case("gray16.png", ODD_LABEL, "ingested", data=gray16(2 * TILE, TILE), size=(2 * TILE, TILE)),
        Case("cmyk.jpg", ODD_LABEL, "ingested", data=encode(base.convert("CMYK"), "JPEG"), size=base.size),
        Case(
            "palette.png",
            ODD_LABEL,
            "ingested",
            data=encode(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
            size=base.size,
        ),
        Case("gray.png", ODD_LABEL, "ingested", data=encode(base.convert("L"), "PNG"), size=base.size),
        Case("rgba.png", ODD_LABEL, "ingested", data=encode(Image.fromarray(rgba), "PNG"), size=(TILE, TILE)),
        Case(
            "exif6.jpg", ODD_LABEL, "ingested", data=exif_rotated_jpeg(2 * TILE, TILE), size=(TILE, 2 * TILE)
        ),
        Case(
            "tall.png",
            ODD_LABEL,
            "ingested",
            data=encode(tissue(TILE, 50 * TILE, seed=8), "PNG"),
            size=(TILE, 50 * TILE),
        ),
    ]


def _broken() -> list[Case]:
    png = encode(tissue(2 * TILE, 2 * TILE, seed=9), "PNG")
    jpeg = encode(tissue(2 * TILE, 2 * TILE, seed=10), "JPEG")
    tiff = encode(tissue(2 * TILE, 2 * TILE, seed=11), "TIFF")
    corrupt = "truncated or corrupt"
    small = "too small to tile"
    side = int(MAX_PIXELS**0.5) + 1
    rows: list[tuple[str, str, bytes, str | None, str]] = [
        # name, ingestion reason, bytes, upload status, upload reason
        ("empty.png", "empty file (0 bytes)", b"", "INVALID_ARGUMENT", "empty upload"),
        ("truncated.png", corrupt, png[: len(png) // 2], "INVALID_ARGUMENT", corrupt),
        ("truncated.jpg", corrupt, jpeg[: len(jpeg) // 2], "INVALID_ARGUMENT", corrupt),
        ("truncated.tif", corrupt, tiff[: len(tiff) // 2], "INVALID_ARGUMENT", corrupt),
        ("text.png", "not a recognised image format", b"hello, I am not a picture\n", "INVALID_ARGUMENT",
         "not a recognised image format"),
        ("bomb.png", "exceeds the limit", png_header_bomb(side, side), "RESOURCE_EXHAUSTED",
         "HISTO_IMAGES__MAX_PIXELS"),
        ("one_pixel.png", small, encode(tissue(1, 1), "PNG"), "INVALID_ARGUMENT", small),
        ("strip.png", small, encode(tissue(4000, 8), "PNG"), "INVALID_ARGUMENT", small),
    ]  # fmt: skip
    cases = [
        Case(name, ODD_LABEL, "reported", reason, data, upload_code=code, upload_reason=upload)
        for name, reason, data, code, upload in rows
    ]
    cases.append(Case("broken_link.png", ODD_LABEL, "reported", "broken symbolic link", kind="symlink"))
    cases.append(Case("unreadable.png", ODD_LABEL, "reported", "permission denied", png, kind="unreadable"))
    return cases


def matrix() -> list[Case]:
    """Every case, good ones first."""
    return [*_good(), *_convertible(), *_broken()]


def can_test_unreadable() -> bool:
    """Root reads a mode-000 file anyway, so the permission case only means something for others."""
    return os.geteuid() != 0


UNREADABLE_SKIP = "running as root: root reads a file with permissions 000, so it cannot fail"


def write_matrix(root: Path, cases: list[Case]) -> dict[str, Path]:
    """Lay ``cases`` out under ``root`` as ``<label>/<name>``; returns rel_path -> path."""
    paths: dict[str, Path] = {}
    for case in cases:
        path = root / case.label / case.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if case.kind == "symlink":
            path.symlink_to(path.parent / "does-not-exist.png")
        else:
            path.write_bytes(case.data)
            if case.kind == "unreadable":
                path.chmod(0)
        paths[case.rel_path] = path
    return paths
