"""BRACS RoI set: ``{train,val,test}/{0_N,…,6_IC}/BRACS_<wsi>_<label>_<n>.png``; and its WSI set:
``BRACS_WSI/{train,val,test}/Group_{BT,AT,MT}/Type_{N,PB,UDH,FEA,ADH,DCIS,IC}/BRACS_<wsi>.svs``.

Scanned at 40x (0.25 µm/px, Aperio AT2). The WSI id in the file name is the leakage unit: the
official splits are patient-level, and evaluation excludes hits from the query's own WSI.

The WSI layout is not documented as a tree on the BRACS site; it is the one several independent
public repositories walk (``BRACS_WSI/test/Group_AT/Type_ADH/BRACS_1228.svs``,
``BRACS_WSI/train/Group_AT/Type_FEA/BRACS_1858.svs``): fairly sure, not certain. A slide's label
is its ``Type_`` folder, named as the RoI labels are (``Type_DCIS`` -> ``DCIS``), so RoIs and slides
of one subtype filter together.
"""

from __future__ import annotations

import re
from pathlib import Path

from histo.data.datasets.base import (
    Problem,
    ScanResult,
    check_root,
    find_dir,
    image_files,
    layout_error,
    read_slide_map,
    rel,
)
from histo.data.records import ImageRecord

SPLITS = ("train", "val", "test")
LABEL_DIRS = ("0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC")
WSI_GROUPS = ("Group_BT", "Group_AT", "Group_MT")
WSI_NAME = re.compile(r"^BRACS_(?P<wsi>\d+)\.svs$", re.IGNORECASE)
FILE_NAME = re.compile(r"^BRACS_(?P<wsi>\d+)_(?P<label>[A-Z]+)_(?P<n>\d+)\.png$", re.IGNORECASE)


class BracsAdapter:
    name: str = "bracs"
    labels: tuple[str, ...] = tuple(d.split("_", 1)[1] for d in LABEL_DIRS)
    mpp: float | None = 0.25
    layout: str = "{train,val,test}/{0_N,1_PB,2_UDH,3_FEA,4_ADH,5_DCIS,6_IC}/BRACS_<wsi>_<label>_<n>.png"

    def scan(self, root: Path) -> ScanResult:
        root = check_root(root)
        top = find_dir(root, _has_splits)
        if top is None:
            wsi_top = find_dir(root, _has_wsi_splits)
            if wsi_top is None:
                raise layout_error(self.name, f"{self.layout} (or the WSI set, {WSI_LAYOUT})", root)
            return self._scan_wsi(root, wsi_top)
        result = ScanResult(self.name, root)
        slide_map = read_slide_map(root)
        for split in SPLITS:
            for label_dir in LABEL_DIRS:
                folder = top / split / label_dir
                if folder.is_dir():
                    self._scan_folder(folder, split, label_dir, root, result, slide_map)
        return result

    def _scan_folder(
        self, folder: Path, split: str, label_dir: str, root: Path, result: ScanResult, slide_map: dict
    ) -> None:
        label = label_dir.split("_", 1)[1]
        for path in image_files(folder, root, result.problems):
            match = FILE_NAME.match(path.name)
            if match is None:
                result.problems.append(Problem(str(path), "name is not BRACS_<wsi>_<label>_<n>.png; skipped"))
                continue
            if match["label"].upper() != label:
                reason = f"file name says {match['label']} but folder says {label}; skipped"
                result.problems.append(Problem(str(path), reason))
                continue
            rel_path = rel(path, root)
            slide_id, patient_id = slide_map.get(rel_path, (f"BRACS_{match['wsi']}", None))
            result.records.append(
                ImageRecord(
                    path=path,
                    rel_path=rel_path,
                    dataset=self.name,
                    label=label,
                    split=split,
                    image_id=path.stem,
                    slide_id=slide_id,
                    patient_id=patient_id,
                    mpp=self.mpp,
                    magnification="40x",
                )
            )

    def _scan_wsi(self, root: Path, top: Path) -> ScanResult:
        result = ScanResult(self.name, root)
        for split in SPLITS:
            for group in WSI_GROUPS:
                for type_dir in sorted((top / split / group).glob("Type_*")):
                    label = type_dir.name.removeprefix("Type_")
                    for path in image_files(type_dir, root, result.problems):
                        match = WSI_NAME.match(path.name)
                        if match is None:
                            result.problems.append(Problem(str(path), "name is not BRACS_<wsi>.svs; skipped"))
                            continue
                        result.records.append(
                            ImageRecord(
                                path=path,
                                rel_path=rel(path, root),
                                dataset=self.name,
                                label=label,
                                split=split,
                                image_id=path.stem,
                                slide_id=path.stem,
                                mpp=self.mpp,  # a fallback: the slide's own µm/px comes first
                                magnification="40x",
                            )
                        )
        return result


WSI_LAYOUT = "BRACS_WSI/{train,val,test}/Group_{BT,AT,MT}/Type_<label>/BRACS_<wsi>.svs"


def _has_wsi_splits(folder: Path) -> bool:
    return any((folder / split / group).is_dir() for split in SPLITS for group in WSI_GROUPS)


def _has_splits(folder: Path) -> bool:
    return any((folder / split / label).is_dir() for split in SPLITS for label in LABEL_DIRS)
