"""SimCLR: contrastive learning of two views with the NT-Xent loss."""

from __future__ import annotations

from typing import Any, ClassVar

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from histo.encoders.methods.base import SSLMethod
from histo.encoders.registry import register_encoder


@register_encoder("simclr", kind="ssl", summary="SimCLR: NT-Xent contrast between two views of a tile")
class SimCLR(SSLMethod):
    """SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020, https://arxiv.org/abs/2002.05709).

    Defaults are solo-learn's ``scripts/pretrain/imagenet-100/simclr.yaml`` with
    ``solo/methods/simclr.py``: projector Linear(512, 4096)-ReLU-Linear(4096, 512) without batch norm
    (lightly's ``SimCLRProjectionHead(batch_norm=False)``), temperature 0.2, LARS (eta 0.02,
    clip_lr, biases and norms excluded) at lr 0.3 per 256 samples, weight decay 1e-4, 10 warm-up
    epochs, symmetric views. All of them are kept for small batches: at batch 32 on synthetic H&E
    the loss fell steadily (4.10 to 3.63 in 60 steps, no spike;
    ``benchmarks/results/small_batch_stability.json``).
    """

    method_name: ClassVar[str] = "simclr"
    SOLO_LEARN_DEFAULTS: ClassVar[dict[str, Any]] = {
        "source": "scripts/pretrain/imagenet-100/simclr.yaml",
        "proj_hidden_dim": 4096,
        "proj_output_dim": 512,
        "temperature": 0.2,
        "optimizer": "lars",
        "lr": 0.3,
        "weight_decay": 1e-4,
        "batch_size": 256,
        "warmup_epochs": 10,
        "max_epochs": 400,
        "augmentations": "symmetric",
    }

    def __init__(
        self,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 512,
        temperature: float = 0.2,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.projection_head = SimCLRProjectionHead(
            self.feature_dim, proj_hidden_dim, proj_output_dim, num_layers=2, batch_norm=False
        )
        self.criterion = NTXentLoss(temperature=temperature)

    def ssl_step(self, views: list[Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        features = [self.backbone(v) for v in views[:2]]
        z0, z1 = (self.projection_head(f) for f in features)
        loss: Tensor = self.criterion(z0, z1)
        return loss, features[0]
