"""Data sets by name: one adapter each, looked up by the CLI, ingestion and evaluation."""

from __future__ import annotations

from pathlib import Path

from histo.data.datasets.bach import BachAdapter
from histo.data.datasets.base import DatasetAdapter, ScanResult
from histo.data.datasets.bracs import BracsAdapter
from histo.data.datasets.crc import CrcAdapter
from histo.data.datasets.folder import FolderAdapter
from histo.data.datasets.slides_csv import SlidesCsvAdapter
from histo.errors import unknown_name

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
        raise unknown_name("dataset", name, dataset_names()) from None


def scan_dataset(root: Path, name: str) -> ScanResult:
    """Find every image of data set ``name`` under ``root``."""
    return adapter_for(name).scan(Path(root))
