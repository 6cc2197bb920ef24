"""Synthetic H&E: real adapters read it unchanged, it is deterministic, and its class is in morphology.

The generator is only useful if (a) what it writes is indistinguishable, layout-wise, from the
real BACH / BRACS / CRC downloads, (b) tile counts are exact, and (c) a colour histogram cannot
tell the classes apart across slides while a crude nuclear-morphology feature can.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo.data.datasets import adapter_for, scan_dataset
from histo.data.synth import (
    CLASS_TABLES,
    SYNTH_DATASETS,
    colour_features,
    contact_sheet,
    cross_group_knn,
    morphology_features,
    render_tile,
    write_synthetic,
)
from histo.data.tiling import TilingConfig, iter_tiles
from histo.data.tissue import is_tissue, tissue_fraction
from histo.errors import InvalidInputError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tiles(root: Path, dataset: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    scan = scan_dataset(root, dataset)
    tiles, labels, groups = [], [], []
    for record in scan.records:
        for tile in iter_tiles(record, TilingConfig()):
            tiles.append(tile.pixels)
            labels.append(str(record.label))
            groups.append(record.group_id)
    return tiles, labels, groups


def test_class_tables_match_the_adapters_labels() -> None:
    assert SYNTH_DATASETS == ("bach", "bracs", "crc")
    for dataset in SYNTH_DATASETS:
        assert tuple(CLASS_TABLES[dataset]) == tuple(adapter_for(dataset).labels)
    assert list(CLASS_TABLES["bach"]) == ["Normal", "Benign", "InSitu", "Invasive"]
    assert list(CLASS_TABLES["bracs"]) == ["N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC"]
    assert list(CLASS_TABLES["crc"]) == ["normal", "low_grade", "high_grade"]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = write_synthetic("bach", tmp_path / "a", slides=2, tiles_per_slide=4, seed=7)
    write_synthetic("bach", tmp_path / "b", slides=2, tiles_per_slide=4, seed=7)
    write_synthetic("bach", tmp_path / "c", slides=2, tiles_per_slide=4, seed=8)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert first.images == 8 and len(a) == 10  # 8 images + histo-slides.csv + histo-synthetic.txt
    assert a == b
    assert a.keys() == c.keys()
    images = [name for name in a if name.endswith(".tif")]
    assert all(a[name] != c[name] for name in images)


def test_bach_layout_names_and_slides(tmp_path: Path) -> None:
    summary = write_synthetic("bach", tmp_path, slides=3, tiles_per_slide=8, seed=1)
    assert (summary.dataset, summary.slides, summary.images) == ("bach", 3, 12)
    scan = scan_dataset(tmp_path, "bach")
    # the marker makes every tile's payload say where it came from (reports keep the banner)
    assert {r.origin for r in scan.records} == {"synthetic"}
    assert scan.problems == []
    got = {(r.rel_path, r.label, r.split, r.slide_id, r.patient_id) for r in scan.records}
    prefixes = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}
    photos = "ICIAR2018_BACH_Challenge/Photos"
    assert got == {
        (f"{photos}/{label}/{prefix}{i + 1:03d}.tif", label, None, f"synth_slide_{i:03d}", None)
        for label, prefix in prefixes.items()
        for i in range(3)
    }
    with Image.open(scan.records[0].path) as image:
        assert (image.format, image.mode, image.size) == ("TIFF", "RGB", (448, 224))  # 8 // 4 = 2 tiles
    assert sum(1 for r in scan.records for _ in iter_tiles(r, TilingConfig())) == summary.tiles == 24


def test_bracs_layout_splits_are_per_slide(tmp_path: Path) -> None:
    summary = write_synthetic("bracs", tmp_path, slides=4, tiles_per_slide=7, seed=2)
    scan = scan_dataset(tmp_path, "bracs")
    assert scan.problems == []
    assert len(scan.records) == summary.images == 28
    assert Counter(r.label for r in scan.records) == {label: 4 for label in CLASS_TABLES["bracs"]}
    split_of = {r.slide_id: r.split for r in scan.records}
    assert set(split_of) == {"BRACS_1000", "BRACS_1001", "BRACS_1002", "BRACS_1003"}
    assert len({(r.slide_id, r.split) for r in scan.records}) == 4  # one split per slide (patient level)
    assert sorted(str(split) for split in split_of.values()) == ["test", "train", "train", "val"]
    assert all(r.patient_id is None for r in scan.records)
    dirs = {label: f"{i}_{label}" for i, label in enumerate(CLASS_TABLES["bracs"])}
    names = {r.rel_path for r in scan.records if r.slide_id == "BRACS_1001"}
    split = split_of["BRACS_1001"]
    assert names == {
        f"BRACS_RoI/latest_version/{split}/{dirs[label]}/BRACS_1001_{label}_{n}.png"
        for n, label in enumerate(CLASS_TABLES["bracs"], start=1)
    }
    assert sum(1 for r in scan.records for _ in iter_tiles(r, TilingConfig())) == summary.tiles == 28


def test_bracs_with_fewer_than_three_slides_is_all_train(tmp_path: Path) -> None:
    write_synthetic("bracs", tmp_path, slides=2, tiles_per_slide=1, seed=0)
    assert {r.split for r in scan_dataset(tmp_path, "bracs").records} == {"train"}


def test_crc_layout_folds_and_patients(tmp_path: Path) -> None:
    summary = write_synthetic("crc", tmp_path, slides=4, tiles_per_slide=12, seed=3)
    scan = scan_dataset(tmp_path, "crc")
    assert scan.problems == []
    assert len(scan.records) == summary.images == 12
    grades = {"normal": 1, "low_grade": 2, "high_grade": 3}
    for record in scan.records:
        pid = int(record.patient_id.split("_")[1]) if record.patient_id else -1
        assert record.slide_id is None
        assert record.split == f"fold_{(pid - 1) % 3 + 1}"
        assert record.image_id.startswith(f"Grade{grades[str(record.label)]}_Patient_{pid:03d}_")
    assert {r.patient_id for r in scan.records} == {f"Patient_{i:03d}" for i in range(1, 5)}
    # 12 tiles per slide / 3 classes = 4 tiles per image, one row of four
    assert sum(1 for r in scan.records for _ in iter_tiles(r, TilingConfig())) == summary.tiles == 48


@pytest.mark.parametrize(("tiles_per_slide", "size", "tiles"), [(2, (224, 224), 1), (20, (896, 448), 8)])
def test_grid_is_min_k_4_columns(tmp_path: Path, tiles_per_slide: int, size: tuple, tiles: int) -> None:
    summary = write_synthetic("bach", tmp_path, slides=1, tiles_per_slide=tiles_per_slide, seed=0)
    record = scan_dataset(tmp_path, "bach").records[0]
    with Image.open(record.path) as image:
        assert image.size == size
    assert summary.tiles == 4 * tiles


def test_other_tile_size_counts_default_tiler_tiles(tmp_path: Path) -> None:
    summary = write_synthetic("crc", tmp_path, slides=1, tiles_per_slide=6, seed=0, tile_size=256)
    scan = scan_dataset(tmp_path, "crc")
    with Image.open(scan.records[0].path) as image:
        assert image.size == (512, 256)
    assert sum(1 for r in scan.records for _ in iter_tiles(r, TilingConfig())) == summary.tiles == 6


def test_slide_map_agrees_with_the_names(tmp_path: Path) -> None:
    write_synthetic("crc", tmp_path, slides=2, tiles_per_slide=3, seed=0)
    with (tmp_path / "histo-slides.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    for row in rows:
        assert (tmp_path / row["path"]).is_file()
        assert row["slide_id"] == ""
        assert row["patient_id"] in row["path"]


def test_every_tile_is_mostly_tissue_and_looks_like_h_and_e(tmp_path: Path) -> None:
    for dataset in SYNTH_DATASETS:
        write_synthetic(dataset, tmp_path / dataset, slides=2, tiles_per_slide=8, seed=4)
        tiles, _, _ = _tiles(tmp_path / dataset, dataset)
        assert tiles
        for tile in tiles:
            assert is_tissue(tile, 0.5)
            assert tissue_fraction(tile) >= 0.65  # at most ~35 % glass, lumen or fat
            coloured = tile[(tile.max(axis=2).astype(int) - tile.min(axis=2)) >= 18].astype(float)
            red, green, blue = coloured.mean(axis=0)
            assert green < red and green < blue  # pink-purple, never green or grey


def test_rewriting_a_folder_replaces_earlier_output(tmp_path: Path) -> None:
    write_synthetic("bach", tmp_path, slides=3, tiles_per_slide=1, seed=0)
    summary = write_synthetic("bach", tmp_path, slides=2, tiles_per_slide=1, seed=0)
    assert len(scan_dataset(tmp_path, "bach").records) == summary.images == 8


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        write_synthetic("bach", tmp_path, slides=1, tiles_per_slide=1, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "pathmnist"}, "choose one of: bach, bracs, crc"),
        ({"slides": 0}, "slides must be at least 1"),
        ({"tiles_per_slide": 0}, "tiles per slide must be at least 1"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments_raise_one_line_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"dataset": "bach", "out": tmp_path / "out", "slides": 1, "tiles_per_slide": 1, "seed": 0} | kwargs
    with pytest.raises(InvalidInputError, match=message) as caught:
        write_synthetic(**args)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_colour_is_near_chance_and_morphology_well_above(tmp_path: Path) -> None:
    write_synthetic("bach", tmp_path, slides=8, tiles_per_slide=8, seed=0)
    tiles, labels, groups = _tiles(tmp_path, "bach")
    assert len(tiles) == 64 and len(set(groups)) == 8
    chance = 1 / 4
    colour = cross_group_knn(colour_features(tiles), labels, groups)
    morphology = cross_group_knn(morphology_features(tiles), labels, groups, standardise=True)
    assert colour <= chance + 0.15, colour
    assert morphology >= chance + 0.2, morphology


def test_knn_never_uses_neighbours_from_the_same_group() -> None:
    features = np.array([[0.0], [0.1], [5.0], [5.1]])
    labels = ["a", "a", "b", "b"]
    # twins in one group: the nearest allowed neighbour is the other pair, with the other label
    assert cross_group_knn(features, labels, ["g1", "g1", "g2", "g2"], k=1) == 0.0
    assert cross_group_knn(features, labels, ["g1", "g2", "g1", "g2"], k=1) == 1.0


def test_contact_sheet_one_row_per_class(tmp_path: Path) -> None:
    png = contact_sheet("crc", tmp_path / "sheet.png", seed=0, per_class=2, tile_size=96)
    with Image.open(png) as image:
        assert image.size == (130 + 2 * (96 + 4), 3 * (96 + 4))
    with pytest.raises(InvalidInputError):
        contact_sheet("nope", tmp_path / "x.png")


def test_render_tile_shape_and_classes_differ() -> None:
    normal = render_tile("bach", "Normal", seed=0, slide=0)
    invasive = render_tile("bach", "Invasive", seed=0, slide=0)
    assert normal.shape == invasive.shape == (224, 224, 3) and normal.dtype == np.uint8
    assert not np.array_equal(normal, invasive)
    with pytest.raises(InvalidInputError, match="Normal, Benign"):
        render_tile("bach", "Malignant")
