"""A folder of whole-slide images described by ``slides.csv``: ``path,label,slide_id,patient_id``.

The layout of a lab's own archive: slides anywhere under the root, one CSV row each (``path``
relative to the root; ``label``, ``slide_id`` and ``patient_id`` optional — the slide id defaults
to the file's stem). Further columns are ignored. A row naming a missing file, or one outside
the root, is a problem, not an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

from histo.data.datasets.base import Problem, ScanResult, check_root, inside_root, rel
from histo.data.records import ImageRecord
from histo.errors import DatasetLayoutError

CSV_NAME = "slides.csv"
REQUIRED = ("path",)


class SlidesCsvAdapter:
    name: str = "slides"
    labels: tuple[str, ...] = ()
    mpp: float | None = None
    layout: str = "<root>/slides.csv (path,label,slide_id,patient_id) and the slides it names"

    def scan(self, root: Path) -> ScanResult:
        root = check_root(root)
        table = root / CSV_NAME
        if not table.is_file():
            raise DatasetLayoutError(f"{root} has no {CSV_NAME}; expected {self.layout}")
        result = ScanResult(self.name, root)
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
            if missing:
                raise DatasetLayoutError(f"{table}: no {', '.join(missing)} column; expected {self.layout}")
            for line, row in enumerate(reader, start=2):
                self._add(root, row, line, result)
        return result

    def _add(self, root: Path, row: dict[str, str], line: int, result: ScanResult) -> None:
        path = root / (row.get("path") or "").strip()
        where = f"{CSV_NAME} line {line}"
        if not (row.get("path") or "").strip():
            result.problems.append(Problem(where, "empty path; skipped"))
        elif not inside_root(path, root):
            result.problems.append(Problem(str(path), f"{where} names a file outside the data set folder"))
        elif not path.exists():
            result.problems.append(Problem(str(path), f"{where} names a file that does not exist"))
        else:
            result.records.append(
                ImageRecord(
                    path=path,
                    rel_path=rel(path, root),
                    dataset=self.name,
                    label=(row.get("label") or "").strip() or None,
                    split=(row.get("split") or "").strip() or None,
                    image_id=(row.get("slide_id") or "").strip() or path.stem,
                    slide_id=(row.get("slide_id") or "").strip() or path.stem,
                    patient_id=(row.get("patient_id") or "").strip() or None,
                )
            )
