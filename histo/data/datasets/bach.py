"""BACH (ICIAR 2018) microscopy photos: ``Photos/{Normal,Benign,InSitu,Invasive}/*.tif``.

2048 x 1536 RGB TIFF at 0.42 µm/px. The download has no patient ids, so the image is the
leakage unit unless a ``histo-slides.csv`` beside ``Photos`` supplies them.
"""

from __future__ import annotations

from pathlib import Path

from histo.data.datasets.base import (
    ScanResult,
    check_root,
    find_dir,
    image_files,
    layout_error,
    read_slide_map,
    rel,
)
from histo.data.records import ImageRecord

CLASSES = ("Normal", "Benign", "InSitu", "Invasive")


class BachAdapter:
    name: str = "bach"
    labels: tuple[str, ...] = CLASSES
    mpp: float | None = 0.42
    layout: str = "Photos/{Normal,Benign,InSitu,Invasive}/*.tif"

    def scan(self, root: Path) -> ScanResult:
        root = check_root(root)
        photos = find_dir(root, _is_photos)
        if photos is None:
            raise layout_error(self.name, self.layout, root)
        result = ScanResult(self.name, root)
        slide_map = read_slide_map(root)
        for label in CLASSES:
            folder = photos / label
            if not folder.is_dir():
                continue
            for path in image_files(folder, root, result.problems):
                rel_path = rel(path, root)
                slide_id, patient_id = slide_map.get(rel_path, (None, None))
                result.records.append(
                    ImageRecord(
                        path=path,
                        rel_path=rel_path,
                        dataset=self.name,
                        label=label,
                        split=None,
                        image_id=path.stem,
                        slide_id=slide_id,
                        patient_id=patient_id,
                        mpp=self.mpp,
                        magnification="20x",
                    )
                )
        return result


def _is_photos(folder: Path) -> bool:
    return sum((folder / label).is_dir() for label in CLASSES) >= 2
