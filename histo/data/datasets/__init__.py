"""Data set adapters: read BRACS, BACH, CRC and any class-folder tree as their users download them."""

from histo.data.datasets.base import DatasetAdapter, Problem, ScanResult
from histo.data.datasets.registry import (
    adapter_for,
    check_dataset_name,
    dataset_names,
    default_dataset_name,
    scan_dataset,
)

__all__ = [
    "DatasetAdapter",
    "Problem",
    "ScanResult",
    "adapter_for",
    "check_dataset_name",
    "dataset_names",
    "default_dataset_name",
    "scan_dataset",
]
