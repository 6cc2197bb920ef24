"""``Embedder``: tiles in, L2-normalised float32 vectors out, exactly as the artifact prescribes.

Batched, under ``torch.inference_mode``, channels-last, bf16 autocast on GPUs. Orientation pooling
averages the embedding over the 4 rotations (or all 8 symmetries of the square) of each tile: a
histology tile has no "up", so a rotated or flipped query should find its tile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histo.encoders.artifact import (
    DIGEST_HEX,
    WEIGHTS_FILE,
    ArtifactMeta,
    artifact_digest,
    load_meta,
    load_weights,
)
from histo.encoders.models import load_network
from histo.errors import InvalidInputError


def symmetries(images: torch.Tensor, count: int) -> list[torch.Tensor]:
    """The first ``count`` (1, 4 or 8) elements of the square's symmetry group applied to images."""
    rotations = [torch.rot90(images, k, dims=(2, 3)) for k in range(4)]
    if count == 1:
        return rotations[:1]
    if count == 4:
        return rotations
    flipped = torch.flip(images, dims=(3,))
    return rotations + [torch.rot90(flipped, k, dims=(2, 3)) for k in range(4)]


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else the first GPU, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TileEmbedder(Protocol):
    """What the search engine needs of an encoder: an ``Embedder``, or an ``EmbedBatcher`` over one."""

    @property
    def dim(self) -> int: ...

    @property
    def meta(self) -> ArtifactMeta: ...

    @property
    def digest(self) -> str: ...

    def embed(self, tiles: np.ndarray) -> np.ndarray: ...


class Embedder:
    """An encoder ready to embed tiles; build it with ``Embedder.from_artifact(path)``."""

    def __init__(
        self,
        network: nn.Module,
        meta: ArtifactMeta,
        device: str | None = None,
        batch_size: int = 64,
        orientation_pooling: int | None = None,
        artifact: str = "",
    ) -> None:
        """``artifact``: the artifact's digest (``artifact_digest``), which every vector this
        embedder writes is stamped with (``histo.provenance``)."""
        self.meta = meta
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.orientations = orientation_pooling or meta.orientation_pooling
        if self.orientations not in (1, 4, 8):
            raise InvalidInputError(f"orientation pooling must be 1, 4 or 8, not {self.orientations}")
        self.network = network.to(self.device).eval()
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(meta.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(meta.std, device=self.device).view(1, 3, 1, 1)
        self.digest = self._effective_digest(artifact)

    def _effective_digest(self, artifact: str) -> str:
        """The artifact's digest, or another one when this embedder pools other orientations than
        the artifact prescribes (its vectors differ, so they must not pass for the artifact's)."""
        if self.orientations == self.meta.orientation_pooling:
            return artifact
        pooled = f"{artifact}/orientations={self.orientations}"
        return hashlib.sha256(pooled.encode()).hexdigest()[:DIGEST_HEX]

    @classmethod
    def from_artifact(cls, path: Path, **kwargs: object) -> Embedder:
        """Restore an encoder from its artifact folder; preprocessing comes from the artifact only."""
        meta = load_meta(Path(path))
        folder = Path(path).parent if Path(path).is_file() else Path(path)
        weights = load_weights(folder) if (folder / WEIGHTS_FILE).exists() else None
        digest = artifact_digest(folder)
        return cls(load_network(meta, weights), meta, artifact=digest, **kwargs)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def dim(self) -> int:
        return self.meta.embedding_dim

    def embed(self, tiles: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, H, W, 3) uint8 tiles to (N, dim) float32 unit vectors."""
        batch = np.stack(list(tiles)) if not isinstance(tiles, np.ndarray) else tiles
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise InvalidInputError(f"expected tiles of shape (N, H, W, 3), got {batch.shape}")
        out = [
            self._embed_batch(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def preprocess(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 NHWC to the normalised NCHW float tensor of the artifact's input size."""
        images = (
            torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        )
        size = self.meta.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return (images - self._mean) / self._std

    @torch.inference_mode()
    def _embed_batch(self, tiles: np.ndarray) -> np.ndarray:
        images = self.preprocess(tiles)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            views = symmetries(images, self.orientations)
            pooled = torch.stack([self.network(view).float() for view in views]).mean(dim=0)
        return F.normalize(pooled, dim=1).cpu().numpy().astype(np.float32)
