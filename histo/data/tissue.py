"""A cheap tissue test: is this tile stained tissue, or glass / black border?

H&E tissue is coloured (haematoxylin blue-purple, eosin pink); slide background is bright and
grey, scanner borders are black. A pixel counts as tissue when its chroma (max - min channel)
is at least ``MIN_CHROMA`` and it is not near-black. Cheap enough to run on every tile (it
looks at every ``step``-th pixel), and colour-agnostic enough for stain variation.
"""

from __future__ import annotations

import numpy as np

MIN_CHROMA = 18
MIN_BRIGHTNESS = 30


def tissue_fraction(rgb: np.ndarray, step: int = 4) -> float:
    """Fraction of sampled pixels that look like stained tissue (0..1)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ValueError(f"expected an HxWx3 array, got shape {rgb.shape}")
    sample = rgb[::step, ::step].astype(np.int16)
    high = sample.max(axis=2)
    chroma = high - sample.min(axis=2)
    tissue = (chroma >= MIN_CHROMA) & (high >= MIN_BRIGHTNESS)
    return float(tissue.mean())


def is_tissue(rgb: np.ndarray, min_fraction: float) -> bool:
    """True when at least ``min_fraction`` of the tile is tissue."""
    return min_fraction <= 0.0 or tissue_fraction(rgb) >= min_fraction
