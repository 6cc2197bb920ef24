"""Backbones for the SSL methods: torchvision ResNets, randomly initialised, classifier removed.

Nothing is ever downloaded (no ImageNet or histology ResNet weights ship here, DESIGN.md §6).
``create_backbone(name, weights=path)`` loads a state dict saved by us, by solo-learn, by lightly
or by a plain ``torch.save(model.state_dict())``: a bare state dict or one under ``state_dict``
(Lightning checkpoints), with a leading ``module.`` (DDP), ``backbone.`` or ``encoder.`` prefix
stripped; when a prefixed backbone is found, the other entries (projection heads, prototypes) are
ignored, as is the classifier ``fc.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

from histo.encoders.safe_load import load_tensors
from histo.errors import InvalidInputError, NotFoundError, unknown_name

BACKBONES: tuple[str, ...] = ("resnet18", "resnet50")
_FACTORIES: dict[str, Callable[..., nn.Module]] = {"resnet18": models.resnet18, "resnet50": models.resnet50}
_PREFIXES = ("module.", "backbone.", "encoder.")
_SHOWN = 5


def create_backbone(name: str = "resnet18", weights: Path | None = None) -> tuple[nn.Module, int]:
    """A torchvision ResNet with ``fc = Identity`` and its feature dimension (512 or 2048).

    Random initialisation unless ``weights`` names a state-dict file (see the module docstring).
    """
    if name not in _FACTORIES:
        raise unknown_name("backbone", name, list(BACKBONES))
    model: Any = _FACTORIES[name](weights=None)
    feature_dim = int(model.fc.in_features)
    model.fc = nn.Identity()
    if weights is not None:
        load_backbone_weights(model, Path(weights))
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
