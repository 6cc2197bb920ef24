"""Adapters read fixture trees that copy each data set's real layout and file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from histo.data.datasets import adapter_for, dataset_names, scan_dataset
from histo.errors import DatasetLayoutError, UnknownNameError
from tests.helpers import write_image


def _bracs_tree(root: Path) -> Path:
    top = root / "BRACS_RoI" / "latest_version"
    for rel in (
        "train/0_N/BRACS_1003_N_1.png",
        "train/0_N/BRACS_1003_N_2.png",
        "train/6_IC/BRACS_1003_IC_3.png",
        "val/5_DCIS/BRACS_1228_DCIS_5.png",
        "test/1_PB/BRACS_264_PB_32.png",
    ):
        write_image(top / rel)
    (top / "README.txt").write_text("not an image")
    return root


def test_bracs_parses_label_split_and_wsi(tmp_path: Path) -> None:
    result = scan_dataset(_bracs_tree(tmp_path), "bracs")
    got = {(r.image_id, r.label, r.split, r.slide_id) for r in result.records}
    assert got == {
        ("BRACS_1003_N_1", "N", "train", "BRACS_1003"),
        ("BRACS_1003_N_2", "N", "train", "BRACS_1003"),
        ("BRACS_1003_IC_3", "IC", "train", "BRACS_1003"),
        ("BRACS_1228_DCIS_5", "DCIS", "val", "BRACS_1228"),
        ("BRACS_264_PB_32", "PB", "test", "BRACS_264"),
    }
    assert result.problems == []
    first = result.records[0]
    assert first.rel_path.startswith("BRACS_RoI/latest_version/")
    assert first.mpp == 0.25 and first.group_id == first.slide_id


def test_bracs_reports_misfiled_and_misnamed_files(tmp_path: Path) -> None:
    top = _bracs_tree(tmp_path) / "BRACS_RoI" / "latest_version"
    write_image(top / "train/2_UDH/BRACS_77_IC_1.png")
    write_image(top / "train/2_UDH/scan_0001.png")
    result = scan_dataset(tmp_path, "bracs")
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert "file name says IC but folder says UDH" in reasons["BRACS_77_IC_1.png"]
    assert "BRACS_<wsi>_<label>_<n>.png" in reasons["scan_0001.png"]
    assert len(result.records) == 5


def test_bach_reads_photos_tree(tmp_path: Path) -> None:
    photos = tmp_path / "ICIAR2018_BACH_Challenge" / "Photos"
    for rel in (
        "Normal/n001.tif",
        "Benign/b001.tif",
        "InSitu/is001.tif",
        "Invasive/iv001.tif",
        "Invasive/iv002.tif",
    ):
        write_image(photos / rel)
    (photos / "microscopy_ground_truth.csv").write_text("n001.tif,Normal\n")
    result = scan_dataset(tmp_path, "bach")
    assert [(r.label, r.image_id) for r in result.records] == [
        ("Normal", "n001"),
        ("Benign", "b001"),
        ("InSitu", "is001"),
        ("Invasive", "iv001"),
        ("Invasive", "iv002"),
    ]
    assert all(r.split is None and r.mpp == 0.42 and r.group_id == r.image_id for r in result.records)


def test_slide_map_supplies_leakage_units(tmp_path: Path) -> None:
    photos = tmp_path / "Photos"
    write_image(photos / "Normal/n001.tif")
    write_image(photos / "Benign/b001.tif")
    (tmp_path / "histo-slides.csv").write_text("path,slide_id,patient_id\nPhotos/Normal/n001.tif,s1,p9\n")
    records = {r.image_id: r for r in scan_dataset(tmp_path, "bach").records}
    assert (records["n001"].slide_id, records["n001"].patient_id, records["n001"].group_id) == (
        "s1",
        "p9",
        "p9",
    )
    assert records["b001"].group_id == "b001"


def test_crc_reads_folds_grades_and_patients(tmp_path: Path) -> None:
    for rel in (
        "fold_1/1_normal/Grade1_Patient_157_5.png",
        "fold_2/2_low_grade/Grade2_Patient_002_073780_036698.png",
        "fold_3/3_high_grade/Grade3_Patient_044_011111_022222.png",
    ):
        write_image(tmp_path / "Extended_CRC" / rel)
    result = scan_dataset(tmp_path, "crc")
    got = [(r.split, r.label, r.patient_id) for r in result.records]
    assert got == [
        ("fold_1", "normal", "Patient_157"),
        ("fold_2", "low_grade", "Patient_002"),
        ("fold_3", "high_grade", "Patient_044"),
    ]


def test_crc_reads_flat_folder_by_file_name(tmp_path: Path) -> None:
    write_image(tmp_path / "Grade2_Patient_010_1_2.png")
    write_image(tmp_path / "Grade3_Patient_011_3_4.png")
    write_image(tmp_path / "notes.png")
    result = scan_dataset(tmp_path, "crc")
    assert [(r.label, r.split) for r in result.records] == [("low_grade", None), ("high_grade", None)]
    assert len(result.problems) == 1 and "no grade" in result.problems[0].reason


def test_folder_with_and_without_splits(tmp_path: Path) -> None:
    write_image(tmp_path / "a/tumour/x.jpg")
    write_image(tmp_path / "a/stroma/y.png")
    plain = scan_dataset(tmp_path / "a", "folder")
    assert sorted((r.label, r.split) for r in plain.records) == [("stroma", None), ("tumour", None)]
    write_image(tmp_path / "b/train/tumour/x.tiff")
    write_image(tmp_path / "b/test/stroma/y.jpeg")
    split = scan_dataset(tmp_path / "b", "folder")
    assert sorted((r.label, r.split) for r in split.records) == [("stroma", "test"), ("tumour", "train")]


@pytest.mark.parametrize("name", ["bracs", "bach", "crc", "folder"])
def test_unrecognised_layout_says_what_was_expected_and_found(tmp_path: Path, name: str) -> None:
    (tmp_path / "slides").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError) as info:
        scan_dataset(tmp_path, name)
    message = str(info.value)
    assert adapter_for(name).layout in message and "slides/" in message and "notes.txt" in message


def test_missing_root_and_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no such folder"):
        scan_dataset(tmp_path / "nope", "bach")
    with pytest.raises(UnknownNameError) as info:
        scan_dataset(tmp_path, "camelyon")
    assert all(name in str(info.value) for name in dataset_names())


def test_symlink_outside_root_is_not_followed(tmp_path: Path) -> None:
    outside = write_image(tmp_path / "secret" / "x.png")
    root = tmp_path / "data"
    write_image(root / "tumour" / "a.png")
    (root / "tumour" / "b.png").symlink_to(outside)
    result = scan_dataset(root, "folder")
    assert [r.image_id for r in result.records] == ["tumour/a"]
    assert "outside the data set folder" in result.problems[0].reason
