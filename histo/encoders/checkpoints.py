"""Import solo-learn checkpoints as histo artifacts, without unpickling arbitrary objects.

solo-learn saves Lightning checkpoints whose ``state_dict`` holds the backbone under
``backbone.`` (older releases: ``encoder.``) beside projector, predictor and classifier weights.
The file is read with ``torch.load(weights_only=True)`` and an explicit allow-list of the few
plain types its metadata uses; anything else is refused with the name of the offending global.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from histo.encoders.artifact import ArtifactMeta, save_artifact
from histo.encoders.registry import get_spec
from histo.encoders.safe_load import load_tensors
from histo.encoders.transforms import IMAGENET_MEAN, IMAGENET_STD
from histo.errors import InvalidInputError, NotFoundError

BACKBONE_PREFIXES = ("backbone.", "encoder.", "module.backbone.", "model.backbone.")
SAFE_GLOBALS: list[Any] = [argparse.Namespace, OrderedDict]
SOURCES = ("solo-learn",)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint as plain data; refuses pickled code with a one-line reason."""
    if not path.is_file():
        raise NotFoundError(f"{path}: no such checkpoint file")
    advice = "save only its state_dict with torch.save(ckpt['state_dict'], 'weights.pt') and import that"
    data = load_tensors(path, "checkpoint", advice, allowed=SAFE_GLOBALS)
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a checkpoint dict, found {type(data).__name__}")
    return data


def backbone_state(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's weights with the solo-learn prefix stripped and the classifier head dropped."""
    state = data.get("state_dict", data)
    for prefix in BACKBONE_PREFIXES:
        found = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and not k[len(prefix) :].startswith("fc.")
        }
        if found:
            return found
    shown = ", ".join(list(state)[:4]) or "(empty)"
    raise InvalidInputError(f"no backbone weights under {', '.join(BACKBONE_PREFIXES)}; keys start: {shown}")


def infer_resnet(state: dict[str, torch.Tensor]) -> str:
    """resnet18 or resnet50 from the weights' shapes."""
    if "layer4.0.conv3.weight" in state:
        return "resnet50"
    if "layer4.0.conv2.weight" in state:
        return "resnet18"
    raise InvalidInputError("backbone is not a torchvision ResNet-18/50; histo imports only those")


def import_solo_learn(ckpt: Path, method: str, out_dir: Path, input_size: int = 224) -> Path:
    """Turn a solo-learn checkpoint of ``method`` into an artifact folder."""
    if get_spec(method).kind != "ssl":
        raise InvalidInputError(f"{method!r} is a baseline; --method takes a trained SSL method")
    data = read_checkpoint(ckpt)
    state = backbone_state(data)
    architecture = infer_resnet(state)
    if state.get("conv1.weight") is not None and state["conv1.weight"].shape[-1] != 7:
        raise InvalidInputError(
            "backbone has a CIFAR stem (3x3 conv1); histo imports ImageNet-stem ResNets only"
        )
    from histo.encoders.backbones import create_backbone

    network, dim = create_backbone(architecture)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InvalidInputError(
            f"weights do not fit {architecture}: {', '.join([*missing, *unexpected][:4])}"
        )
    meta = ArtifactMeta(
        name=out_dir.name,
        kind="ssl",
        method=method,
        architecture=architecture,
        embedding_dim=dim,
        input_size=input_size,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        data={"source": "solo-learn", "checkpoint": str(ckpt), "epoch": data.get("epoch")},
        training={"imported": True, "global_step": data.get("global_step")},
    )
    return save_artifact(out_dir, meta, network.state_dict())
