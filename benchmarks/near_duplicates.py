"""The real-H&E near-duplicate task: does a tile changed as slides and scanners change it find itself?

Index: every 224 px tile of the shipped real H&E samples (``histo/data/samples``: skin, carcinoma,
ovarian carcinoma; real scans, no labels needed). Queries: a fixed-seed sample of those tiles, each
changed in one way a re-scan, another lab or another viewer changes it:

- ``rotate90`` / ``flip``: the tile turned or mirrored (a tile has no up);
- ``stain``: a strong HED shift, as between labs (haematoxylin and eosin scaled ±25 %, shifted);
- ``jpeg``: re-compressed at quality 40;
- ``crop_rescale``: the central 80 % cropped and scaled back to 224 px (another objective or stitching);
- ``blur``: a slight Gaussian blur (sigma 1.2 px, a scan just out of focus).

An encoder passes a query when the original tile is the top hit among all indexed tiles. Reported:
top-1 per change and encoder, and two summaries — ``rotation`` (rotate90, flip) and ``stain``.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageFilter

from histo.data.datasets import scan_dataset
from histo.data.samples import sample_dir
from histo.data.tiling import TilingConfig, iter_tiles
from histo.embedding import Embedder
from histo.encoders.transforms import hed_to_rgb, rgb_to_hed

CHANGES = ("rotate90", "flip", "stain", "jpeg", "crop_rescale", "blur")
SUMMARIES = {"rotation": ("rotate90", "flip"), "stain": ("stain",)}


def real_tiles() -> np.ndarray:
    """Every tissue tile of the shipped real samples, (N, 224, 224, 3) uint8."""
    tiles = [
        tile.pixels
        for record in scan_dataset(sample_dir(), "folder").records
        for tile in iter_tiles(record, TilingConfig())
    ]
    return np.stack(tiles)


def stain_shift(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale H and E optical densities by 0.75-1.25 (sign drawn) and shift them by ±0.05."""
    rgb = torch.from_numpy(tile).permute(2, 0, 1).float() / 255.0
    hed = rgb_to_hed(rgb)
    alpha = torch.tensor([1 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.25) for _ in range(2)] + [1.0])
    beta = torch.tensor([rng.uniform(-0.05, 0.05) for _ in range(2)] + [0.0])
    out = hed_to_rgb(hed * alpha[:, None, None] + beta[:, None, None])
    return (out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def change(tile: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """``tile`` changed in the way ``how`` names (see the module docstring)."""
    if how == "rotate90":
        return np.ascontiguousarray(np.rot90(tile, int(rng.integers(1, 4))))
    if how == "flip":
        return np.ascontiguousarray(tile[:, ::-1] if rng.random() < 0.5 else tile[::-1])
    if how == "stain":
        return stain_shift(tile, rng)
    image = Image.fromarray(tile)
    if how == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=40)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    if how == "crop_rescale":
        size = tile.shape[0]
        margin = round(size * 0.1)
        box = (margin, margin, size - margin, size - margin)
        return np.asarray(image.crop(box).resize((size, size), Image.Resampling.BICUBIC))
    if how == "blur":
        return np.asarray(image.filter(ImageFilter.GaussianBlur(radius=1.2)))
    raise ValueError(f"unknown change {how!r}; choose one of {', '.join(CHANGES)}")


def queries(tiles: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Indices of ``count`` query tiles and, per change, their changed versions."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(tiles), size=min(count, len(tiles)), replace=False))
    return chosen, {how: np.stack([change(tiles[i], how, rng) for i in chosen]) for how in CHANGES}


def top1(embedder: Embedder, tiles: np.ndarray, chosen: np.ndarray, changed: dict[str, np.ndarray]) -> dict:
    """Share of changed queries whose original is the top hit, per change, plus the summaries."""
    index = embedder.embed(tiles)
    scores = {}
    for how, batch in changed.items():
        best = np.argmax(embedder.embed(batch) @ index.T, axis=1)
        scores[how] = round(float((best == chosen).mean()), 4)
    for name, parts in SUMMARIES.items():
        scores[name] = round(float(np.mean([scores[p] for p in parts])), 4)
    scores["all"] = round(float(np.mean([scores[how] for how in CHANGES])), 4)
    return scores
