"""Warwick extended colorectal cancer grading set (Shaban et al., IEEE TMI 2020).

300 large H&E images (about 5000 x 7300 px, 20x, Omnyx VL120) graded normal / low grade /
high grade. Layout as used by the TIA group's own code (CGC-Net and successors):
``fold_{1,2,3}/{1_normal,2_low_grade,3_high_grade}/Grade<g>_Patient_<pid>_<…>.png``; the
three folds are the published cross-validation splits. The fold level is optional, and a flat
folder of ``Grade<g>_Patient_*.png`` files is read too (grade from the name).
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
    subdirs,
)
from histo.data.records import ImageRecord

GRADE_DIRS = {"1_normal": "normal", "2_low_grade": "low_grade", "3_high_grade": "high_grade"}
GRADE_OF_NUMBER = {"1": "normal", "2": "low_grade", "3": "high_grade"}
FILE_NAME = re.compile(r"^Grade(?P<grade>[123])_Patient_(?P<pid>[0-9A-Za-z-]+)(?:_.*)?$", re.IGNORECASE)
FOLD = re.compile(r"^fold_?\d+$", re.IGNORECASE)


class CrcAdapter:
    name: str = "crc"
    labels: tuple[str, ...] = tuple(GRADE_DIRS.values())
    mpp: float | None = 0.55
    layout: str = "[fold_N/]{1_normal,2_low_grade,3_high_grade}/Grade<g>_Patient_<pid>_*.png"

    def scan(self, root: Path) -> ScanResult:
        root = check_root(root)
        top = find_dir(root, _has_grades_or_folds) or find_dir(root, _has_graded_files)
        if top is None:
            raise layout_error(self.name, self.layout, root)
        result = ScanResult(self.name, root)
        slide_map = read_slide_map(root)
        folds = [d for d in subdirs(top) if FOLD.match(d.name)]
        for fold in folds or [top]:
            split = fold.name if folds else None
            grade_dirs = [fold / g for g in GRADE_DIRS if (fold / g).is_dir()]
            for folder in grade_dirs or [fold]:
                self._scan_folder(folder, split, GRADE_DIRS.get(folder.name), root, result, slide_map)
        return result

    def _scan_folder(
        self,
        folder: Path,
        split: str | None,
        label: str | None,
        root: Path,
        result: ScanResult,
        slide_map: dict,
    ) -> None:
        for path in image_files(folder, root, result.problems):
            match = FILE_NAME.match(path.stem)
            name_label = GRADE_OF_NUMBER[match["grade"]] if match else None
            if label and name_label and label != name_label:
                reason = f"file name says {name_label} but folder says {label}; skipped"
                result.problems.append(Problem(str(path), reason))
                continue
            if not (label or name_label):
                result.problems.append(Problem(str(path), "no grade in folder or name (Grade<g>_…); skipped"))
                continue
            rel_path = rel(path, root)
            default_patient = f"Patient_{match['pid']}" if match else None
            slide_id, patient_id = slide_map.get(rel_path, (None, default_patient))
            result.records.append(
                ImageRecord(
                    path=path,
                    rel_path=rel_path,
                    dataset=self.name,
                    label=label or name_label,
                    split=split,
                    image_id=path.stem,
                    slide_id=slide_id,
                    patient_id=patient_id,
                    mpp=self.mpp,
                    magnification="20x",
                )
            )


def _has_grades_or_folds(folder: Path) -> bool:
    children = {d.name for d in subdirs(folder)}
    if children & set(GRADE_DIRS):
        return True
    return any(FOLD.match(name) and _has_grades_or_folds(folder / name) for name in children)


def _has_graded_files(folder: Path) -> bool:
    return any(FILE_NAME.match(p.stem) for p in folder.iterdir() if p.is_file())
