"""Colour histogram encoder: the leak detector among the baselines.

A joint RGB histogram (8 x 8 x 8 bins) with a square-root (Hellinger) map, so cosine similarity
behaves like the Bhattacharyya coefficient. On data whose classes differ in morphology only, it
must retrieve near chance; if it does better, colour (stain, slide) is leaking into the labels.
"""

from __future__ import annotations

import torch
from torch import nn


class ColorHistogram(nn.Module):
    """Images in [0, 1] (mean 0, std 1 preprocessing) to a bins**3-d histogram feature."""

    def __init__(self, bins: int = 8) -> None:
        super().__init__()
        self.bins = bins

    @property
    def dim(self) -> int:
        return self.bins**3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = (images.float().clamp(0, 1) * (self.bins - 1e-4)).long()
        index = (levels[:, 0] * self.bins + levels[:, 1]) * self.bins + levels[:, 2]
        flat = index.flatten(1)
        counts = torch.zeros(flat.shape[0], self.dim, device=images.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
        return (counts / flat.shape[1]).sqrt()
