"""What ``histocli data scan`` reports: images and tiles per split and label, and every problem.

Without decoding, tile counts are the grid from each image header (an upper bound: the tissue
test needs pixels). With ``decode=True`` every image is decoded and tiled, so the counts are
exact and truncated files show up as problems.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from histo.data.datasets.base import Problem, ScanResult
from histo.data.images import open_header
from histo.data.records import ImageRecord
from histo.data.tiling import TilingConfig, boxes_for, iter_tiles
from histo.errors import ImageDecodeError


@dataclass
class ScanReport:
    """Counts per (split, label) and the problems found; ``exact`` says whether tiles were decoded."""

    dataset: str
    root: str
    exact: bool
    images: Counter[tuple[str, str]] = field(default_factory=Counter)
    tiles: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        rows = [
            {"split": split, "label": label, "images": self.images[key], "tiles": self.tiles[key]}
            for key in sorted(self.images)
            for split, label in [key]
        ]
        return {
            "dataset": self.dataset,
            "root": self.root,
            "tiles_exact": self.exact,
            "images": sum(self.images.values()),
            "tiles": sum(self.tiles.values()),
            "groups": rows,
            "problems": [{"path": p.path, "reason": p.reason} for p in self.problems],
        }


def inspect_scan(
    scan: ScanResult, config: TilingConfig, max_pixels: int, decode: bool = False, progress: bool = True
) -> ScanReport:
    """Count images and (grid or exact) tiles per group, collecting one problem per bad file."""
    report = ScanReport(scan.dataset, str(scan.root), exact=decode, problems=list(scan.problems))
    for record in tqdm(scan.records, desc="scanning", unit="img", disable=not progress):
        try:
            count = _count_tiles(record, config, max_pixels, decode)
        except ImageDecodeError as exc:
            report.problems.append(Problem(str(record.path), str(exc).removeprefix(f"{record.path}: ")))
            continue
        key = (record.split or "-", record.label or "-")
        report.images[key] += 1
        report.tiles[key] += count
    return report


def _count_tiles(record: ImageRecord, config: TilingConfig, max_pixels: int, decode: bool) -> int:
    if decode:
        return sum(1 for _ in iter_tiles(record, config, max_pixels))
    with open_header(record.path, max_pixels) as image:
        return len(boxes_for(image.size, record, config))
