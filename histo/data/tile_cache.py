"""Tiles decoded once, kept on disk as one uint8 array, for training epochs that re-read them.

Decoding a 2048 x 1536 TIFF for every crop of every epoch would starve the model; instead the
tiles of a data set are cut once into ``HISTO_HOME/cache/<key>/tiles.u8`` (memory-mapped) with
their labels and leakage groups. The key hashes the file list (size, mtime) and the tiling, so a
changed data set or option builds a new cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from histo.data.datasets.base import Problem
from histo.data.records import ImageRecord
from histo.data.tiling import TilingConfig, iter_tiles
from histo.errors import ImageDecodeError, InvalidInputError


@dataclass
class TileSet:
    """N tiles as an (N, T, T, 3) uint8 array, with per-tile label, split and leakage group."""

    pixels: np.ndarray
    labels: list[str | None]
    splits: list[str | None]
    groups: list[str]
    dataset: str

    def __len__(self) -> int:
        return len(self.labels)

    def label_names(self) -> list[str]:
        return sorted({label for label in self.labels if label is not None})


def cache_key(records: list[ImageRecord], config: TilingConfig) -> str:
    """Hash of the files (path, size, mtime) and the tiling options."""
    digest = hashlib.sha1(json.dumps(asdict(config), sort_keys=True).encode())
    for record in records:
        stat = record.path.stat()
        digest.update(f"{record.dataset}/{record.rel_path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_tile_set(
    records: list[ImageRecord],
    config: TilingConfig,
    max_pixels: int,
    cache_root: Path,
    progress: bool = True,
) -> tuple[TileSet, list[Problem]]:
    """The tiles of ``records``: from the cache when it is current, else cut now and cached."""
    if not records:
        raise InvalidInputError("no images to tile; check the data folder and --layout")
    folder = cache_root / cache_key(records, config)
    if (folder / "index.json").is_file():
        return _read(folder, config.tile_size)
    return _build(records, config, max_pixels, folder, progress)


def _build(
    records: list[ImageRecord], config: TilingConfig, max_pixels: int, folder: Path, progress: bool
) -> tuple[TileSet, list[Problem]]:
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"labels": [], "splits": [], "groups": [], "problems": []}
    with (folder / "tiles.u8").open("wb") as out:
        for record in tqdm(records, desc="cutting tiles", unit="img", disable=not progress):
            try:
                for tile in iter_tiles(record, config, max_pixels):
                    out.write(np.ascontiguousarray(tile.pixels).tobytes())
                    index["labels"].append(record.label)
                    index["splits"].append(record.split)
                    index["groups"].append(record.group_id)
            except ImageDecodeError as exc:
                index["problems"].append([str(record.path), str(exc)])
    index["dataset"] = records[0].dataset
    (folder / "index.json").write_text(json.dumps(index))  # written last: its presence marks a complete cache
    return _read(folder, config.tile_size)


def _read(folder: Path, tile_size: int) -> tuple[TileSet, list[Problem]]:
    index = json.loads((folder / "index.json").read_text())
    count = len(index["labels"])
    shape = (count, tile_size, tile_size, 3)
    pixels = (
        np.memmap(folder / "tiles.u8", dtype=np.uint8, mode="r", shape=shape)
        if count
        else np.zeros(shape, np.uint8)
    )
    problems = [Problem(path, reason) for path, reason in index["problems"]]
    return TileSet(pixels, index["labels"], index["splits"], index["groups"], index["dataset"]), problems
