"""Data set adapters: read BRACS, BACH, CRC and any class-folder tree as their users download them."""

from histo.data.datasets.base import DatasetAdapter, Problem, ScanResult
from histo.data.datasets.registry import adapter_for, dataset_names, scan_dataset

__all__ = ["DatasetAdapter", "Problem", "ScanResult", "adapter_for", "dataset_names", "scan_dataset"]
