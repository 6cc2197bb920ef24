"""Whole-slide images: synthetic pyramids and the real SVS through OpenSlide, tissue on the
thumbnail, tiles read from the right level, and bad slides as one line each."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histo.data.datasets import scan_dataset
from histo.data.records import Box, ImageRecord
from histo.data.samples import WSI_SAMPLE
from histo.data.slides import is_slide, open_slide, plan_slide, slide_montage, slide_tiles
from histo.data.synth_slides import canvas_tiles, slide_canvas, write_pyramid, write_synthetic_slides
from histo.data.tile_source import TileSource
from histo.data.tiling import TilingConfig
from histo.errors import ImageDecodeError, InvalidInputError
from tests.helpers import write_image

SIZE = (1536, 2048)  # (height, width): two levels at 4x


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, tuple[Box, ...]]:
    """One synthetic Benign slide: its file, its level-0 pixels and its tissue regions."""
    canvas, regions = slide_canvas("bach", "Benign", seed=0, slide=0, size=SIZE)
    path = tmp_path_factory.mktemp("wsi") / "benign.tiff"
    write_pyramid(path, SIZE[1], SIZE[0], canvas_tiles(canvas), mpp=0.5)
    return path, canvas, regions


def record_of(path: Path, mpp: float | None = None) -> ImageRecord:
    return ImageRecord(path, path.name, "slides", "Benign", None, path.stem, mpp=mpp)


def inside(box: Box, region: Box) -> bool:
    return (
        region.x <= box.x
        and region.y <= box.y
        and box.x + box.w <= region.x + region.w
        and (box.y + box.h <= region.y + region.h)
    )


def overlaps(box: Box, region: Box) -> bool:
    return (
        box.x < region.x + region.w
        and region.x < box.x + box.w
        and box.y < region.y + region.h
        and (region.y < box.y + box.h)
    )


def test_a_synthetic_pyramid_opens_as_generic_tiff_with_its_resolution(slide: tuple) -> None:
    path, _, _ = slide
    assert is_slide(path)
    with open_slide(path) as opened:
        info = opened.info
    assert (info.width, info.height) == (2048, 1536) and info.levels == ((2048, 1536), (512, 384))
    assert info.mpp == pytest.approx(0.5) and info.vendor == "generic-tiff"


def test_photos_stay_photos(tmp_path: Path) -> None:
    assert not is_slide(write_image(tmp_path / "photo.tif", 300, 200))  # a striped TIFF: Pillow reads it
    assert not is_slide(write_image(tmp_path / "photo.png", 300, 200))


def test_tissue_boxes_lie_on_the_known_tissue_and_tiles_equal_its_pixels(slide: tuple) -> None:
    path, canvas, regions = slide
    planned, boxes = plan_slide(record_of(path), TilingConfig())
    assert planned.mpp == pytest.approx(0.5) and planned.slide_id == "benign"
    assert boxes and all(any(overlaps(b, r) for r in regions) for b in boxes)
    grid = [Box(x, y, 224, 224) for y in range(0, 1536 - 223, 224) for x in range(0, 2048 - 223, 224)]
    assert {b for b in grid if any(inside(b, r) for r in regions)} <= set(boxes)  # no tissue box missed
    tiles = list(slide_tiles(planned, boxes, TilingConfig()))
    assert tiles and all(t.payload["level"] == 0 and t.payload["mpp"] == pytest.approx(0.5) for t in tiles)
    first = tiles[0]
    b = first.box
    assert np.array_equal(first.pixels, canvas[b.y : b.y + b.h, b.x : b.x + b.w])  # lossless pyramid


def test_a_coarser_target_resolution_reads_a_reduced_level(slide: tuple) -> None:
    path, _, _ = slide
    config = TilingConfig(tile_size=64, target_mpp=2.0, min_tissue=0.3)  # 4x coarser: 256 px boxes
    planned, boxes = plan_slide(record_of(path), config)
    assert boxes and all(b.w == 256 for b in boxes)
    tiles = list(slide_tiles(planned, boxes, config))
    assert tiles and {t.payload["level"] for t in tiles} == {1} and tiles[0].pixels.shape == (64, 64, 3)


def test_the_real_svs_reads_with_its_own_resolution(tmp_path: Path) -> None:
    assert is_slide(WSI_SAMPLE)
    planned, boxes = plan_slide(
        ImageRecord(WSI_SAMPLE, WSI_SAMPLE.name, "folder", None, None, "cmu"), TilingConfig()
    )
    assert planned.mpp == pytest.approx(0.499) and len(boxes) > 20
    tiles = list(slide_tiles(planned, boxes[:8], TilingConfig()))
    assert tiles and all(t.pixels.shape == (224, 224, 3) for t in tiles)
    with open_slide(WSI_SAMPLE) as opened:
        assert opened.info.vendor == "aperio" and opened.info.objective == "20"


def test_a_slide_tile_and_its_context_come_from_the_pyramid(slide: tuple) -> None:
    path, _, _ = slide
    planned, boxes = plan_slide(record_of(path), TilingConfig())
    tile = next(iter(slide_tiles(planned, boxes, TilingConfig())))
    source = TileSource()
    shown = source.render(tile.payload, size=224)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown.data)).convert("RGB")), tile.pixels)
    context = source.render(tile.payload, view="source", size=512)
    assert (context.width, context.height) == (512, 384) and context.box.w == 56  # 224 px at 1/4


def test_a_slide_montage_is_its_tissue_tiles_edge_to_edge(slide: tuple) -> None:
    path, _, _ = slide
    montage = Image.open(io.BytesIO(slide_montage(path, TilingConfig(), max_tiles=6)))
    assert montage.size in ((224 * 6, 224), (224 * 3, 224 * 2)) or montage.size[0] % 224 == 0


def test_missing_resolution_names_the_mpp_option_and_a_fallback_fixes_it(tmp_path: Path) -> None:
    path = tmp_path / "nompp.tiff"
    with tifffile.TiffWriter(path) as tif:
        for level, (w, h) in enumerate([(2048, 1536), (512, 384)]):
            tif.write(
                np.full((h, w, 3), 200, np.uint8),
                tile=(256, 256),
                photometric="rgb",
                subfiletype=min(level, 1),
            )
    assert is_slide(path)
    with pytest.raises(InvalidInputError, match="--mpp"):
        plan_slide(record_of(path), TilingConfig())
    with pytest.raises(ImageDecodeError, match="no tissue"):  # grey, but now with a resolution
        plan_slide(record_of(path, mpp=0.25), TilingConfig())


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("empty.svs", b"", "not a slide format"),
        ("garbage.ndpi", b"not a slide" * 100, "not a slide format"),
        ("lonely.mrxs", b"[GENERAL]\nSLIDE_ID=x\n", "data folder lonely/"),
    ],
)
def test_bad_slide_files_are_one_line(tmp_path: Path, name: str, content: bytes, words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as caught:
        plan_slide(record_of(path), TilingConfig())
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreadable_tile_is_skipped_and_reported_and_the_rest_read(slide: tuple, tmp_path: Path) -> None:
    path, _, _ = slide
    broken = tmp_path / "broken.tiff"
    data = bytearray(path.read_bytes())
    planned, boxes = plan_slide(record_of(path), TilingConfig())
    good = list(slide_tiles(planned, boxes, TilingConfig()))
    target = good[0].box  # break a tissue tile
    column, row = target.x // 256, target.y // 256
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        index = row * ((2048 + 255) // 256) + column
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    data[offset : offset + count] = b"\xff" * count  # that tile's zlib stream is now garbage
    broken.write_bytes(bytes(data))
    unreadable: list[str] = []
    tiles = list(slide_tiles(record_of(broken, 0.5), boxes, TilingConfig(), unreadable))
    assert unreadable and all("cannot read level 0" in reason for reason in unreadable)
    garbage = Box(column * 256, row * 256, 256, 256)
    expected = [t.box for t in good if not overlaps(t.box, garbage)]
    assert [t.box for t in tiles] == expected and len(expected) < len(good)  # every other tile read
    with pytest.raises(ImageDecodeError, match="cannot read level 0"):  # without a list: an error
        list(slide_tiles(record_of(broken, 0.5), boxes, TilingConfig()))


def test_the_slides_csv_and_folder_layouts_find_slides(tmp_path: Path) -> None:
    written = write_synthetic_slides("bach", tmp_path / "wsi", slides_per_class=1, seed=1, size=(1536, 2048))
    scan = scan_dataset(tmp_path / "wsi", "slides")
    assert [(r.label, r.slide_id, r.patient_id) for r in scan.records] == [
        (s.label, s.slide_id, s.patient_id) for s in written
    ]
    assert {r.label for r in scan_dataset(tmp_path / "wsi", "folder").records} == {
        "Normal",
        "Benign",
        "InSitu",
        "Invasive",
    }
    (tmp_path / "wsi" / "slides.csv").write_text("path,label\nmissing.svs,N\n../outside.svs,N\n")
    problems = scan_dataset(tmp_path / "wsi", "slides").problems
    assert ["does not exist" in p.reason or "outside" in p.reason for p in problems] == [True, True]


def test_the_bracs_wsi_layout(tmp_path: Path) -> None:
    root = tmp_path / "BRACS_WSI"
    for split, group, kind, name in [
        ("train", "Group_AT", "Type_ADH", "BRACS_1858.svs"),
        ("test", "Group_MT", "Type_DCIS", "BRACS_1228.svs"),
        ("val", "Group_BT", "Type_N", "notes.svs"),
    ]:
        (root / split / group / kind).mkdir(parents=True)
        (root / split / group / kind / name).write_bytes(WSI_SAMPLE.read_bytes())
    scan = scan_dataset(tmp_path, "bracs")
    assert sorted((r.split, r.label, r.slide_id) for r in scan.records) == [
        ("test", "DCIS", "BRACS_1228"),
        ("train", "ADH", "BRACS_1858"),
    ]
    assert len(scan.problems) == 1 and "BRACS_<wsi>.svs" in scan.problems[0].reason
