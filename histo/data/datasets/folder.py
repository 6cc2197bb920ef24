"""Any folder of class sub-folders: ``<root>/<label>/*.{png,jpg,jpeg,tif,tiff}``.

If every top-level folder is a split name (train, val, test, …), the layout
``<root>/<split>/<label>/*`` is read instead. Leakage units come from ``histo-slides.csv``.
"""

from __future__ import annotations

from pathlib import Path

from histo.data.datasets.base import (
    ScanResult,
    check_root,
    image_files,
    layout_error,
    read_slide_map,
    rel,
    subdirs,
)
from histo.data.records import ImageRecord

SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


class FolderAdapter:
    name: str = "folder"
    labels: tuple[str, ...] = ()
    mpp: float | None = None
    layout: str = "<root>/<label>/*.{png,jpg,jpeg,tif,tiff} (or <root>/<split>/<label>/*)"

    def scan(self, root: Path) -> ScanResult:
        root = check_root(root)
        top = subdirs(root)
        split_layout = bool(top) and all(d.name.lower() in SPLIT_NAMES for d in top)
        pairs = [(s.name, d) for s in top for d in subdirs(s)] if split_layout else [(None, d) for d in top]
        result = ScanResult(self.name, root)
        slide_map = read_slide_map(root)
        for split, folder in pairs:
            for path in image_files(folder, root, result.problems):
                rel_path = rel(path, root)
                slide_id, patient_id = slide_map.get(rel_path, (None, None))
                result.records.append(
                    ImageRecord(
                        path=path,
                        rel_path=rel_path,
                        dataset=self.name,
                        label=folder.name,
                        split=split,
                        image_id=rel_path.rsplit(".", 1)[0],
                        slide_id=slide_id,
                        patient_id=patient_id,
                    )
                )
        if not result.records and not result.problems:
            raise layout_error(self.name, self.layout, root)
        return result
