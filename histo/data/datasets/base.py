"""What every adapter shares: the walk under a root that never leaves it, and the scan result."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from histo.data.images import IMAGE_SUFFIXES
from histo.data.records import ImageRecord
from histo.data.slides import SLIDE_SUFFIXES
from histo.errors import DatasetLayoutError

SLIDE_MAP_NAME = "histo-slides.csv"
#: Written by ``histocli data synth`` beside the images: every tile ingested from that folder gets
#: payload ``origin: synthetic``, so a report on it says so whoever runs it, however often.
SYNTHETIC_MARKER = "histo-synthetic.txt"
ORIGIN_KEY, SYNTHETIC = "origin", "synthetic"


@dataclass(frozen=True)
class Problem:
    """A file the scan could not use, and why (one line)."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """Records found under a root, plus the problems met on the way."""

    dataset: str
    root: Path
    records: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def with_mpp(self, mpp: float | None) -> ScanResult:
        """The same scan, records without a µm/px given ``mpp`` (``--mpp``; None changes nothing)."""
        if mpp is not None:
            self.records = [r if r.mpp is not None else dataclasses.replace(r, mpp=mpp) for r in self.records]
        return self

    def counts(self) -> Counter[tuple[str, str]]:
        """Images per (split, label); missing values show as '-'."""
        return Counter((r.split or "-", r.label or "-") for r in self.records)


class DatasetAdapter(Protocol):
    """One data set's layout: ``scan`` finds its images or raises ``DatasetLayoutError``."""

    name: str
    labels: tuple[str, ...]
    mpp: float | None
    layout: str

    def scan(self, root: Path) -> ScanResult: ...


def check_root(root: Path) -> Path:
    """The resolved root, or a clear error when it is missing or not a folder."""
    if not root.exists():
        raise DatasetLayoutError(f"{root}: no such folder; give the folder you downloaded the data set to")
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder; give the data set's top folder")
    return root.resolve()


def layout_error(name: str, layout: str, root: Path) -> DatasetLayoutError:
    """The error for an unrecognised layout: what was expected and what is there."""
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:8]
    shown = ", ".join(found) if found else "an empty folder"
    return DatasetLayoutError(f"{root} is not a {name} folder: expected {layout}; found {shown}")


def image_files(folder: Path, root: Path, problems: list[Problem]) -> Iterator[Path]:
    """Image files directly in ``folder``, sorted, skipping any that resolve outside ``root``.

    A folder that is itself a link out of ``root`` is one problem and is not even listed: the
    adapters find their folders with ``is_dir()``, which follows links, and reporting each file of
    a linked tree would name files outside the data set.
    """
    if not inside_root(folder, root):
        problems.append(Problem(str(folder), "folder resolves outside the data set folder; not followed"))
        return
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES + SLIDE_SUFFIXES:
            continue
        if not inside_root(path, root):
            problems.append(Problem(str(path), "resolves outside the data set folder; not followed"))
            continue
        yield path


def inside_root(path: Path, root: Path) -> bool:
    """True when ``path`` (after following symlinks) lies under ``root``; broken links count as inside."""
    try:
        target = path.resolve(strict=False)
    except OSError:
        return False
    return target == root or root in target.parents


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def find_dir(root: Path, accept: object, depth: int = 3) -> Path | None:
    """The shallowest folder at most ``depth`` levels below root for which ``accept(folder)`` holds."""
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if accept(folder):  # type: ignore[operator]
                return folder
        level = [child for folder in level for child in subdirs(folder)]
    return None


def read_slide_map(root: Path) -> dict[str, tuple[str | None, str | None]]:
    """Optional ``histo-slides.csv`` (path, slide_id[, patient_id]): leakage units the names lack."""
    path = root / SLIDE_MAP_NAME
    if not path.is_file() or not inside_root(path, root):  # a link out of the data set is not read
        return {}
    with path.open(newline="") as handle:
        return {
            row["path"]: (row.get("slide_id") or None, row.get("patient_id") or None)
            for row in csv.DictReader(handle)
        }


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
