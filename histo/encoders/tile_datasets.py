"""torch Datasets over a ``TileSet``: augmented views for training, plain tensors for the kNN monitor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from histo.data.tile_cache import TileSet

MONITOR_FRACTION = 0.2


def label_indices(tiles: TileSet) -> np.ndarray:
    """Integer label per tile (sorted label names), -1 where a tile has none."""
    names = {name: i for i, name in enumerate(tiles.label_names())}
    return np.array(
        [names.get(label, -1) if label is not None else -1 for label in tiles.labels], dtype=np.int64
    )


def monitor_split(tiles: TileSet, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, monitor) tile indices. The monitor set is the ``val`` split, else ~20% of leakage groups.

    Unlabelled data gets no monitor set: every tile trains.
    """
    everything = np.arange(len(tiles))
    if not tiles.label_names():
        return everything, everything[:0]
    splits = np.array([s or "" for s in tiles.splits])
    if (splits == "val").any():
        return everything[splits == "train"] if (splits == "train").any() else everything[
            splits != "val"
        ], everything[splits == "val"]
    groups = sorted(set(tiles.groups))
    if len(groups) < 3:
        return everything, everything[:0]
    rng = np.random.default_rng(seed)
    held = set(rng.choice(groups, size=max(1, round(MONITOR_FRACTION * len(groups))), replace=False).tolist())
    in_monitor = np.array([g in held for g in tiles.groups])
    return everything[~in_monitor], everything[in_monitor]


class ViewTiles(Dataset):
    """(list of augmented views, label) per tile, as the SSL methods' ``training_step`` expects."""

    def __init__(
        self, pixels: np.ndarray, indices: np.ndarray, labels: np.ndarray, transform: Callable
    ) -> None:
        self.pixels, self.indices, self.labels, self.transform = pixels, indices, labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[list[torch.Tensor], int]:
        index = int(self.indices[item])
        return self.transform(np.array(self.pixels[index])), int(self.labels[index])


class EvalTiles(ViewTiles):
    """(tensor, label) per tile with the evaluation transform, for the kNN monitor."""
