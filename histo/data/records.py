"""What an adapter finds (an ``ImageRecord``) and what tiling makes of it (a ``Tile``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

POINT_NAMESPACE = uuid.UUID("6f1c7a52-3f0e-4a8e-9a63-2b7d4c1e8f10")


@dataclass(frozen=True)
class ImageRecord:
    """One image file of a data set, with everything its path tells about it."""

    path: Path
    rel_path: str
    dataset: str
    label: str | None
    split: str | None
    image_id: str
    slide_id: str | None = None
    patient_id: str | None = None
    mpp: float | None = None
    magnification: str | None = None
    #: The folder layout the data set was read as (``histo.data.datasets``); ``dataset`` is its name.
    layout: str | None = None
    #: The file as it was read (``histo.data.filestamp``): bytes, modification time in ns and a
    #: content hash, stored with every tile so that ``ingest --sync`` and ``index prune`` can tell
    #: unchanged, changed and vanished files apart. None where not stamped.
    file_size: int | None = None
    file_mtime_us: int | None = None
    file_hash: str | None = None
    #: ``synthetic`` for images ``histocli data synth`` made (``SYNTHETIC_MARKER``), else None.
    origin: str | None = None

    @property
    def root(self) -> Path:
        """The data set folder the image was found in (``path`` without ``rel_path``), absolute:
        stored with every tile so a server can read the tile's pixels back (``TileSource``)."""
        depth = len(Path(self.rel_path).parts)
        return self.path.absolute().parents[depth - 1]

    @property
    def group_id(self) -> str:
        """The leakage unit: patient, else slide, else the image itself."""
        return self.patient_id or self.slide_id or self.image_id


@dataclass(frozen=True)
class Box:
    """A tile's rectangle in the source image's own pixel coordinates."""

    x: int
    y: int
    w: int
    h: int


def point_id(dataset: str, rel_path: str, box: Box) -> str:
    """Deterministic point id: re-ingesting the same tile is an upsert, never a duplicate."""
    key = f"{dataset}/{rel_path}#{box.x},{box.y},{box.w},{box.h}"
    return str(uuid.uuid5(POINT_NAMESPACE, key))


def tile_payload(record: ImageRecord, box: Box, tile_size: int) -> dict[str, Any]:
    """The payload stored beside a tile's vectors (DESIGN.md §4); absent facts are left out."""
    payload: dict[str, Any] = {
        "dataset": record.dataset,
        "layout": record.layout,
        "label": record.label,
        "split": record.split,
        "image_id": record.image_id,
        "slide_id": record.slide_id,
        "patient_id": record.patient_id,
        "root": str(record.root),
        "path": record.rel_path,
        "x": box.x,
        "y": box.y,
        "w": box.w,
        "h": box.h,
        "tile_size": tile_size,
        "mpp": record.mpp,
        "magnification": record.magnification,
        "file_size": record.file_size,
        "file_mtime_us": record.file_mtime_us,
        "file_hash": record.file_hash,
        "origin": record.origin,
    }
    return {key: value for key, value in payload.items() if value is not None}


@dataclass
class Tile:
    """A tile ready to embed: pixels at the target size, box in source coordinates, payload."""

    id: str
    box: Box
    pixels: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)
