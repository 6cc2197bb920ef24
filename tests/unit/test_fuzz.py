"""Property-based fuzzing (hypothesis) of what untrusted input reaches: decoding, tiling, filters.

* Decoding: random bytes and random truncations / byte edits / insertions of valid PNG, JPEG and
  TIFF files in many modes give either an upright 8-bit RGB image or an ``ImageDecodeError``, from
  ``load_rgb`` on bytes and on files, and through the gRPC servicer's ``Search`` (a real engine over
  a small real index; only the transport context is a stand-in) as INVALID_ARGUMENT or
  RESOURCE_EXHAUSTED, never INTERNAL.
* Tiling: for any image size, tile size, stride and resolutions, every box lies inside the image
  with the configured extent, the grid has the documented count, ids are deterministic and unique;
  a configuration is either valid or refused with ``InvalidInputError``.
* Filters: any datasets / labels / splits / exclusions (empty, blank, unicode, thousands of ids),
  built directly or from a proto ``Filter``, either raise ``InvalidInputError`` or return exactly the
  points a brute-force reading of the payloads keeps, from an embedded ``EdgeStore``.

Examples are few (``max_examples`` 40-80) and have no deadline, so the file stays well under a
minute on two cores; the hypothesis database is off, so runs leave nothing in the tree.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from histo.data.images import load_rgb
from histo.data.records import Box, point_id
from histo.data.tiling import (
    MIN_IMAGE_SIDE,
    TilingConfig,
    check_tileable,
    cut_tile,
    grid_boxes,
)
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import ImageDecodeError, ImageTooLargeError, InvalidInputError
from histo.rpc.v1 import search_pb2
from histo.search import SearchEngine
from histo.store import EdgeStore, Point, SearchFilter
from services.search.servicer import SearchServicer, filter_of
from tests.bad_inputs import exif_rotated_jpeg, gray16, png_header_bomb
from tests.helpers import tissue_array

TILE = 32
MAX_PIXELS = 1_000_000
FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------------------------------
# A small real index and engine (colorhist: no network weights, cheap), and the servicer over it
# ------------------------------------------------------------------------------------------------

#: Payload values: plain, unicode, spaces, and look-alikes that a sloppy filter would confuse.
DATASETS = ("bach", "bracs", "Ünï-set", "set b")
LABELS = ("Normal", "DCIS", "IC", "ÄDH", "日本語", "a,b")
SPLITS = ("train", "val", "test")


def payload(i: int) -> dict[str, Any]:
    """Point ``i``'s payload; every third lacks a split, every fourth a slide, every fifth a patient."""
    out: dict[str, Any] = {
        "dataset": DATASETS[i % len(DATASETS)],
        "label": LABELS[(i * 7) % len(LABELS)],
        "image_id": f"img{i % 9}",
        "path": f"p/{i}.png",
    }
    if i % 3:
        out["split"] = SPLITS[i % len(SPLITS)]
    if i % 4:
        out["slide_id"] = f"slide{i % 5}"
    if i % 5:
        out["patient_id"] = f"pat{i % 4}"
    return out


POINTS = 60


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchEngine]:
    folder = tmp_path_factory.mktemp("fuzz")
    artifact = make_baseline_artifact("colorhist", folder / "encoders" / "colorhist", input_size=TILE)
    embedder = Embedder.from_artifact(artifact, device="cpu")
    rng = np.random.default_rng(0)
    with EdgeStore(folder / "index") as store:
        store.ensure_vectors({"colorhist": embedder.dim})
        store.upsert(
            Point(point_id("fuzz", f"p/{i}.png", Box(0, 0, TILE, TILE)), {"colorhist": v}, payload(i))
            for i, v in enumerate(rng.random((POINTS, embedder.dim)) + 0.01)
        )
        yield SearchEngine(
            store,
            {"colorhist": embedder},
            tiling=TilingConfig(tile_size=TILE),
            max_pixels=MAX_PIXELS,
            max_query_tiles=4,
        )


class Aborted(Exception):
    """What the stand-in context raises where gRPC would end the call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    """The two methods of ``grpc.ServicerContext`` the servicer uses when a call fails."""

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def call_search(engine: SearchEngine, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
    return SearchServicer(lambda: engine).Search(request, Context())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# (a) decoding
# ------------------------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _seeds() -> list[bytes]:
    """Valid files in many modes and codecs: the material mutations start from."""
    base = Image.fromarray(tissue_array(40, 24, seed=1))
    seeds = [exif_rotated_jpeg(40, 24), gray16(24, 16), png_header_bomb(2000, 2000)]
    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I", "F", "CMYK"):
        image = base.convert(mode)
        seeds.append(_encoded(image, "TIFF"))
        if mode not in ("CMYK", "F", "I"):
            seeds.append(_encoded(image, "PNG"))
        if mode in ("RGB", "L", "CMYK"):
            seeds.append(_encoded(image, "JPEG", quality=80))
    for compression in ("tiff_lzw", "tiff_deflate", "packbits", "jpeg"):
        seeds.append(_encoded(base, "TIFF", compression=compression))
    return seeds


SEEDS = _seeds()


def _short_ihdr() -> bytes:
    """A PNG whose IHDR length field says 5: Pillow raised a bare ``ValueError`` from ``Image.open``
    (found by this file; it escaped ``load_rgb`` and crashed ingestion / answered INTERNAL)."""
    data = bytearray(_encoded(Image.fromarray(tissue_array(40, 24)), "PNG"))
    data[11] = 5
    return bytes(data)


SHORT_IHDR = _short_ihdr()
UPLOAD = _encoded(Image.fromarray(tissue_array(64, 64)), "PNG")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file, then truncated, or with bytes overwritten (often in the header), or inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    kind = draw(st.sampled_from(("truncate", "header", "anywhere", "insert")))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:])
    reach = min(len(data), 48) if kind == "header" else len(data)  # 48: PNG IHDR, TIFF first tags
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, reach - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def assert_decodes_or_refuses(source: bytes | Path) -> None:
    """``load_rgb`` gives an 8-bit RGB image of its stated size, or an ``ImageDecodeError``."""
    try:
        image = load_rgb(source, MAX_PIXELS)
    except ImageDecodeError as exc:
        assert str(exc) and "\n" not in str(exc)
        event(f"refused: {type(exc).__name__}")
        return
    event("decoded")
    array = np.asarray(image)
    assert image.mode == "RGB" and array.dtype == np.uint8
    assert array.shape == (image.size[1], image.size[0], 3) and image.size[0] * image.size[1] <= MAX_PIXELS


def test_every_seed_decodes() -> None:
    """The mutations start from files that are valid (the bomb excepted, which is refused)."""
    for data in SEEDS:
        try:
            assert load_rgb(data, MAX_PIXELS).mode == "RGB"
        except ImageTooLargeError:
            assert data.startswith(b"\x89PNG")


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    assert_decodes_or_refuses(data)


@FUZZ
@given(
    st.sampled_from((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")), st.binary(max_size=512)
)
def test_magic_numbers_then_garbage(magic: bytes, tail: bytes) -> None:
    assert_decodes_or_refuses(magic + tail)


@settings(FUZZ, max_examples=300)
@given(mutated())
@example(SHORT_IHDR)
def test_mutated_files_as_uploads(data: bytes) -> None:
    assert_decodes_or_refuses(data)


@settings(FUZZ, max_examples=40)
@given(mutated())
def test_mutated_files_on_disk(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("mutated") / "image.tif"
    path.write_bytes(data)
    assert_decodes_or_refuses(path)


@settings(FUZZ, max_examples=60)
@given(st.one_of(mutated(), st.binary(max_size=256)))
@example(SHORT_IHDR)
def test_uploads_through_the_servicer_never_fail_internally(engine: SearchEngine, data: bytes) -> None:
    """A ``Search`` with any uploaded bytes answers hits or a client error, never INTERNAL."""
    try:
        response = call_search(engine, search_pb2.SearchRequest(image=data, top_k=3))
    except Aborted as aborted:
        assert aborted.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert aborted.details and "\n" not in aborted.details
        return
    assert 1 <= len(response.hits) <= 3 and len(response.query_boxes) >= 1


# ------------------------------------------------------------------------------------------------
# (b) tiling
# ------------------------------------------------------------------------------------------------


def axis_count(length: int, tile: int, stride: int) -> int:
    """Tiles along one axis by the grid rule of ``histo/data/tiling.py``."""
    return 1 if length < tile else (length - tile) // stride + 1


resolutions = st.one_of(
    st.none(),
    st.floats(min_value=1e-6, max_value=1e3),
    st.sampled_from((0.0, -1.0, math.nan, math.inf, 1e-300)),
)


@FUZZ
@given(
    tile_size=st.integers(-5, 5000),
    stride=st.one_of(st.none(), st.integers(-3, 600)),
    target_mpp=resolutions,
    min_tissue=st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)),
)
def test_tiling_config_is_valid_or_refused(
    tile_size: int, stride: int | None, target_mpp: float | None, min_tissue: float
) -> None:
    valid = (
        16 <= tile_size <= 4096
        and (stride is None or stride >= 1)
        and (target_mpp is None or (target_mpp > 0 and math.isfinite(target_mpp)))
        and 0 <= min_tissue <= 1
    )
    if not valid:
        with pytest.raises(InvalidInputError):
            TilingConfig(tile_size, stride, target_mpp, min_tissue)
        return
    config = TilingConfig(tile_size, stride, target_mpp, min_tissue)
    assert config.step == (stride or tile_size)


@FUZZ
@given(
    width=st.integers(1, 6000),
    height=st.integers(1, 6000),
    tile_size=st.integers(16, 512),
    stride=st.one_of(st.none(), st.integers(1, 600)),
    target_mpp=st.one_of(st.none(), st.floats(0.05, 5.0)),
    source_mpp=st.one_of(st.none(), st.floats(1e-4, 100.0)),
)
def test_boxes_lie_inside_with_the_configured_extent_and_unique_ids(
    width: int,
    height: int,
    tile_size: int,
    stride: int | None,
    target_mpp: float | None,
    source_mpp: float | None,
) -> None:
    config = TilingConfig(tile_size=tile_size, stride=stride, target_mpp=target_mpp)
    try:
        tile, step = config.source_extent(source_mpp)
    except InvalidInputError as exc:  # only for a tile stretched beyond MAX_UPSAMPLING
        assert "upsampled" in str(exc) and config.scale_for(source_mpp) > 16
        return
    assert tile >= 1 and step >= 1
    count = axis_count(width, tile, step) * axis_count(height, tile, step)
    assume(count <= 20_000)
    boxes = grid_boxes(width, height, tile, step)
    assert len(boxes) == count
    for box in boxes:
        assert box.x >= 0 and box.x + box.w <= width and box.y >= 0 and box.y + box.h <= height
        assert (box.w, box.h) == (min(tile, width), min(tile, height))
    ids = [point_id("folder", "label/image.png", box) for box in boxes]
    assert len(set(ids)) == len(ids)
    assert ids == [
        point_id("folder", "label/image.png", box) for box in grid_boxes(width, height, tile, step)
    ]
    assert not set(ids) & {point_id("folder", "label/image2.png", box) for box in boxes}


@settings(FUZZ, max_examples=40)
@given(width=st.integers(1, 300), height=st.integers(1, 300), tile_size=st.integers(16, 96))
def test_cut_tiles_have_the_tile_size_and_small_images_are_refused(
    width: int, height: int, tile_size: int
) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        with pytest.raises(ImageDecodeError, match="too small to tile"):
            check_tileable((width, height), "x.png")
        return
    check_tileable((width, height), "x.png")
    image = Image.fromarray(tissue_array(width, height))
    boxes = grid_boxes(width, height, tile_size, tile_size)
    for box in (boxes[0], boxes[-1]):
        pixels = cut_tile(image, box, tile_size)
        assert pixels.shape == (tile_size, tile_size, 3) and pixels.dtype == np.uint8


@FUZZ
@given(mpp=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(1e-3, 1e3)))
def test_query_resolution_is_used_or_refused(engine: SearchEngine, mpp: float) -> None:
    """Any ``mpp`` on an image query: hits, or INVALID_ARGUMENT (never a million tiny tiles, and
    never a 64 px image searched as a tile it would cover less than half of)."""
    target = 0.5
    engine_at = SearchEngine(
        engine.store,
        {"colorhist": engine.embedder("colorhist")},
        tiling=TilingConfig(tile_size=TILE, target_mpp=target),
        max_query_tiles=4,
        warm_up=False,
    )
    request = search_pb2.SearchRequest(image=UPLOAD, mpp=mpp, top_k=2)
    sent = request.mpp  # as the wire carries it; 0 means "not given"
    extent = min(TILE * target / sent, 2.0**40) if sent > 0 and math.isfinite(sent) else TILE  # source px
    if sent == 0 or (0 < sent / target <= 16 and 0.5 * float(round(extent)) ** 2 <= 64 * 64):
        response = call_search(engine_at, request)
        assert len(response.hits) == 2 and 1 <= len(response.query_boxes) <= 4
        return
    with pytest.raises(Aborted) as aborted:
        call_search(engine_at, request)
    assert aborted.value.code == grpc.StatusCode.INVALID_ARGUMENT and "\n" not in aborted.value.details


# ------------------------------------------------------------------------------------------------
# (c) filters
# ------------------------------------------------------------------------------------------------

known = st.sampled_from(
    DATASETS + LABELS + SPLITS + tuple(f"img{i}" for i in range(9)) + ("slide1", "slide3", "pat1", "pat3")
)
odd = st.one_of(st.text(max_size=12), st.sampled_from(("", " ", "\t", "\x00", "a\x00b", "é" * 300)))
#: Three in four values exist in the payloads (so filters keep something), one in four is odd.
values = st.integers(0, 3).flatmap(lambda i: odd if i == 0 else known)
value_lists = st.one_of(
    st.lists(values, max_size=6),
    st.integers(1000, 3000).map(lambda n: [f"other{i}" for i in range(n)] + ["img3"]),  # huge, one real
)


@dataclass(frozen=True)
class FilterInput:
    dataset: str | None
    labels: list[str]
    split: str | None
    images: list[str]
    slides: list[str]
    patients: list[str]

    def strings(self) -> list[str]:
        single = [v for v in (self.dataset, self.split) if v is not None]
        return [*single, *self.labels, *self.images, *self.slides, *self.patients]

    def build(self) -> SearchFilter:
        return SearchFilter(
            dataset=self.dataset,
            labels=tuple(self.labels),
            split=self.split,
            exclude_image_ids=tuple(self.images),
            exclude_slide_ids=tuple(self.slides),
            exclude_patient_ids=tuple(self.patients),
        )

    def message(self) -> search_pb2.Filter:
        return search_pb2.Filter(
            dataset=self.dataset or "",
            labels=self.labels,
            split=self.split or "",
            exclude_image_ids=self.images,
            exclude_slide_ids=self.slides,
            exclude_patient_ids=self.patients,
        )

    def keeps(self, p: dict[str, Any]) -> bool:
        """Brute force: what the filter means on one payload (a missing field never matches)."""
        return (
            (self.dataset is None or p.get("dataset") == self.dataset)
            and (not self.labels or p.get("label") in self.labels)
            and (self.split is None or p.get("split") == self.split)
            and p.get("image_id") not in self.images
            and p.get("slide_id") not in self.slides
            and p.get("patient_id") not in self.patients
        )


filters = st.builds(
    FilterInput,
    dataset=st.one_of(st.none(), st.sampled_from(DATASETS), values),
    labels=st.one_of(st.just([]), st.lists(st.sampled_from(LABELS), min_size=1, max_size=3), value_lists),
    split=st.one_of(st.none(), st.sampled_from(SPLITS), values),
    images=value_lists,
    slides=st.lists(values, max_size=4),
    patients=st.lists(values, max_size=4),
)


def is_valid(strings: list[str]) -> bool:
    """The documented rule: every filter value is a string with something besides whitespace."""
    return all(s.strip() for s in strings)


def expected_ids(engine: SearchEngine, keeps: Any) -> set[str]:
    return {r.id for r in engine.store.scroll() if keeps(r.payload)}


def names_unknown_values(engine: SearchEngine, given: FilterInput) -> bool:
    """Whether the filter names a data set the index lacks, or a label or split its data set (or
    the index) lacks: the engine says so (NOT_FOUND) instead of answering with fewer hits."""
    payloads = [r.payload for r in engine.store.scroll()]
    if given.dataset and given.dataset not in {p.get("dataset") for p in payloads}:
        return True
    scope = [p for p in payloads if not given.dataset or p.get("dataset") == given.dataset]
    labels, splits = {p.get("label") for p in scope}, {p.get("split") for p in scope}
    return any(label not in labels for label in given.labels) or bool(
        given.split and given.split not in splits
    )


@settings(FUZZ, max_examples=60)
@given(filters)
def test_search_filter_is_exact_or_refused(engine: SearchEngine, given_filter: FilterInput) -> None:
    if not is_valid(given_filter.strings()):
        event("refused")
        with pytest.raises(InvalidInputError, match="filter"):
            given_filter.build()
        return
    flt = given_filter.build()
    want = expected_ids(engine, given_filter.keeps)
    event(f"valid, {'no' if not want else 'some'} hits")
    hits = engine.store.search(
        "colorhist", np.ones(engine.embedder("colorhist").dim), POINTS, flt, exact=True
    )
    assert {h.id for h in hits} == want
    assert engine.store.count(flt) == len(want)


@settings(FUZZ, max_examples=50)
@given(filters)
def test_proto_filter_through_the_servicer_is_exact_or_invalid_argument(
    engine: SearchEngine, given_filter: FilterInput
) -> None:
    """Over the servicer an empty dataset / split means "not given" (proto3 has no null)."""
    as_sent = FilterInput(
        given_filter.dataset or None,
        given_filter.labels,
        given_filter.split or None,
        given_filter.images,
        given_filter.slides,
        given_filter.patients,
    )
    message = given_filter.message()
    vector = search_pb2.Vector(values=[1.0] * engine.embedder("colorhist").dim)
    request = search_pb2.SearchRequest(vector=vector, top_k=1000, filter=message, exact=True)
    if not is_valid(as_sent.strings()):
        event("refused")
        with pytest.raises(InvalidInputError):
            filter_of(message)
        with pytest.raises(Aborted) as aborted:
            call_search(engine, request)
        assert aborted.value.code == grpc.StatusCode.INVALID_ARGUMENT and "\n" not in aborted.value.details
        return
    assert filter_of(message) == as_sent.build()
    want = expected_ids(engine, as_sent.keeps)
    kept_only = as_sent.dataset or as_sent.labels or as_sent.split
    if names_unknown_values(engine, as_sent) or (not want and kept_only):
        event("explained: NOT_FOUND")
        with pytest.raises(Aborted) as aborted:
            call_search(engine, request)
        assert aborted.value.code == grpc.StatusCode.NOT_FOUND and "\n" not in aborted.value.details
        return
    response = call_search(engine, request)
    event(f"valid, {'no' if not want else 'some'} hits")
    assert {h.id for h in response.hits} == want
