"""Rebuild an encoder's network from its artifact metadata (and weights, when it has any)."""

from __future__ import annotations

import torch
from torch import nn

from histo.encoders.artifact import ArtifactMeta
from histo.encoders.backbones import create_backbone
from histo.encoders.colorhist import ColorHistogram
from histo.errors import InvalidInputError


def build_network(meta: ArtifactMeta) -> nn.Module:
    """An untrained network of the artifact's architecture."""
    if meta.architecture == "colorhist":
        return ColorHistogram(bins=int(meta.extra.get("bins", 8)))
    network, _ = create_backbone(meta.architecture)
    return network


def load_network(meta: ArtifactMeta, state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    """The artifact's network with its weights, in eval mode."""
    network = build_network(meta)
    if state_dict is not None:
        missing, unexpected = network.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            shown = ", ".join([*missing, *unexpected][:4])
            raise InvalidInputError(f"artifact {meta.name!r} weights do not fit {meta.architecture}: {shown}")
    return network.eval()
