"""Decode any common image into 8-bit RGB, with our own decompression-bomb limit.

Pillow's own limit warns at ~89 Mpx and fails at ~179 Mpx, silently, whatever the caller wants.
histo replaces it with ``HISTO_IMAGES__MAX_PIXELS``, checked on the header before any pixel is
decoded, so a 10,000 x 10,000 slide region is accepted and a bomb is refused in microseconds.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from histo.errors import ImageDecodeError, ImageTooLargeError

Image.MAX_IMAGE_PIXELS = None  # replaced by check_pixel_limit(), which is a setting
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 250_000_000
#: What Pillow's format plugins raise on corrupt or hostile bytes, in the header or the pixel data.
#: Fuzzing (``tests/unit/test_fuzz.py``) found ``Image.open`` raising a bare ``ValueError`` for a
#: PNG with a short IHDR chunk and a TIFF with invalid dimensions, which escaped as a crash of
#: ingestion and an INTERNAL gRPC error; the other types are what plugins raise on bad tables.
#: Each becomes an ``ImageDecodeError``: one bad file or upload is reported, never fatal.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    ZeroDivisionError,
    OverflowError,
    struct.error,
)


def check_pixel_limit(size: tuple[int, int], max_pixels: int, name: str) -> None:
    """Refuse images whose header promises more pixels than the limit allows."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}; "
            "raise HISTO_IMAGES__MAX_PIXELS if this image is genuine"
        )


def open_header(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open lazily (header only) and enforce the pixel limit; no pixel data is decoded yet."""
    name = _name_of(source)
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageDecodeError(f"{name}: empty upload; send the image file's bytes")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        _check_file(source)
        stream = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(stream)
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not a recognised image format (PNG, JPEG or TIFF)") from None
    except OSError as exc:
        raise ImageDecodeError(f"{name}: cannot be read ({_short(exc)})") from None
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(f"{name}: corrupt image header ({_short(exc)})") from None
    try:
        check_pixel_limit(image.size, max_pixels, name)
    except ImageDecodeError:
        image.close()  # a refused file must not hold its descriptor until garbage collection
        raise
    return image


def load_rgb(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode fully into one 8-bit RGB image, upright (EXIF orientation applied).

    Only one full-size decoded copy is alive when this returns: mode conversions replace the
    decoded original instead of keeping both.
    """
    name = _name_of(source)
    image = open_header(source, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # copies only when a rotation is needed
            return to_rgb(image)
    except DECODE_ERRORS as exc:
        image.close()
        raise ImageDecodeError(f"{name}: truncated or corrupt image data ({_short(exc)})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16-bit is rescaled, alpha is laid on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def to_array(image: Image.Image) -> np.ndarray:
    """An HxWx3 uint8 array of an RGB image."""
    return np.asarray(to_rgb(image), dtype=np.uint8)


def _rescale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map a high-bit-depth grayscale array onto 0..255 by its dtype's range (not per image)."""
    array = array.astype(np.float64)
    peak = 65535.0 if array.max(initial=0) > 255 else 255.0
    return np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _check_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise ImageDecodeError(f"{path}: broken symbolic link; fix or remove it")
    if not path.is_file():
        raise ImageDecodeError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except PermissionError:
        raise ImageDecodeError(f"{path}: permission denied; make it readable (chmod +r)") from None
    if size == 0:
        raise ImageDecodeError(f"{path}: empty file (0 bytes); re-download or remove it")


def _name_of(source: Path | bytes) -> str:
    return "uploaded image" if isinstance(source, bytes | bytearray) else str(source)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
