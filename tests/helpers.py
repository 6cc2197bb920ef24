"""Small image writers for fixture trees that copy the real data set layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact

PINK = (200, 120, 170)
#: ``histocli ingest`` options of a folder of class sub-folders kept under the data set name "folder".
AS_FOLDER = ("--layout", "folder", "--name", "folder")


def tissue_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A stained-looking (high chroma) noisy array that passes the tissue test."""
    rng = np.random.default_rng(seed)
    base = np.array(PINK, dtype=np.int16)
    noise = rng.integers(-20, 21, size=(height, width, 3), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0, **save: object) -> Path:
    """Write a small tissue-like image in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tissue_array(width, height, seed)).save(path, **save)
    return path


def baseline_embedders(folder: Path, input_size: int = 32) -> dict[str, Embedder]:
    """The two fast baseline encoders (colour histogram, random weights), one orientation each."""
    return {
        name: Embedder.from_artifact(
            make_baseline_artifact(name, folder / name, input_size=input_size), orientation_pooling=1
        )
        for name in ("colorhist", "random")
    }
