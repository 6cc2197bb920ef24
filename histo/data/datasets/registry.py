"""Data sets by name: one adapter each, looked up by the CLI, ingestion and evaluation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from histo.data.datasets.bach import BachAdapter
from histo.data.datasets.base import SYNTHETIC, SYNTHETIC_MARKER, DatasetAdapter, ScanResult
from histo.data.datasets.bracs import BracsAdapter
from histo.data.datasets.crc import CrcAdapter
from histo.data.datasets.folder import FolderAdapter
from histo.data.datasets.slides_csv import SlidesCsvAdapter
from histo.errors import InvalidInputError, UnknownNameError, unknown_name

_ADAPTERS: dict[str, DatasetAdapter] = {
    adapter.name: adapter
    for adapter in (BracsAdapter(), BachAdapter(), CrcAdapter(), FolderAdapter(), SlidesCsvAdapter())
}


def dataset_names() -> list[str]:
    return list(_ADAPTERS)


def adapter_for(name: str) -> DatasetAdapter:
    """The adapter registered under ``name``; an unknown name lists the known ones."""
    try:
        return _ADAPTERS[name]
    except KeyError:
        near = unknown_name("layout", name, dataset_names())
        raise UnknownNameError(
            f"{near}; for a folder of class sub-folders use --layout folder, and name the data set "
            f"with --name (e.g. --layout folder --name {name if _NAME.match(name) else 'mydata'})"
        ) from None


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_dataset_name(name: object) -> str:
    """A data set name as the index keeps it (a payload keyword, part of every point id)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"data set name {name!r} is not allowed; use letters, digits, '_', '-' and '.' "
            "(at most 64, starting with a letter or digit), e.g. --name my_lab_2024"
        )
    return name


def default_dataset_name(layout: str, root: Path) -> str:
    """The name a data set gets without ``--name``: BRACS, BACH, CRC and slides keep their layout's
    name; a folder of class sub-folders is named after the folder itself (``./MyData`` -> mydata),
    so that two such folders never merge into one data set unasked."""
    if layout != "folder":
        return layout
    folder = Path(root).expanduser().absolute()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name).strip("_.-").lower()
    return stem if stem and _NAME.match(stem) else "folder"


def scan_dataset(root: Path, layout: str, name: str | None = None) -> ScanResult:
    """Every image under ``root`` read as ``layout`` (``dataset_names()``), as data set ``name``
    (default: the layout's name); each record knows both."""
    result = adapter_for(layout).scan(Path(root))
    dataset = check_dataset_name(name) if name is not None else layout
    result.dataset = dataset
    origin = SYNTHETIC if (Path(root) / SYNTHETIC_MARKER).is_file() else None
    result.records = [
        dataclasses.replace(r, dataset=dataset, layout=layout, origin=origin) for r in result.records
    ]
    return result
