"""Barlow Twins: redundancy reduction through the cross-correlation of two views' embeddings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from PIL import Image
from torch import Tensor

from histo.encoders.methods.base import SSLMethod
from histo.encoders.registry import register_encoder
from histo.encoders.transforms import two_view_transform


@register_encoder(
    "barlow_twins", kind="ssl", summary="Barlow Twins: cross-correlation of two views towards identity"
)
class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy
    Reduction", ICML 2021, https://arxiv.org/abs/2103.03230).

    Defaults are solo-learn's ``scripts/pretrain/imagenet-100/barlow.yaml`` with
    ``solo/methods/barlow_twins.py``: projector 512-2048-2048-D with batch norm (lightly's
    ``BarlowTwinsProjectionHead``), lambda 0.0051, loss scaled by ``scale_loss`` 0.1, LARS (eta 0.02,
    clip_lr, biases and norms excluded) at lr 0.3 per 256 samples, weight decay 1e-4, 10 warm-up
    epochs, asymmetric views. lightly's ``BarlowTwinsLoss`` standardises each dimension over the
    batch as solo-learn's affine-free batch norm does.

    One default differs for the small batches a CPU allows: the projector output ``D`` is 512, not
    solo-learn's 2048 (kept in ``SOLO_LEARN_DEFAULTS``). The D x D cross-correlation is estimated
    from one batch; with D = 2048 and 32 or 64 samples its off-diagonal noise (about
    lambda * D^2 / N) swamps the signal, and training on synthetic H&E spiked to 2-5x the median
    loss in 5 of 60 steps at batch 32 and 4 of 60 at batch 64, while D = 512 trained without a
    spike at both (``benchmarks/results/small_batch_stability.json``). With batches of 256 or more
    pass ``proj_output_dim=2048``.
    """

    method_name: ClassVar[str] = "barlow_twins"
    SOLO_LEARN_DEFAULTS: ClassVar[dict[str, Any]] = {
        "source": "scripts/pretrain/imagenet-100/barlow.yaml",
        "proj_hidden_dim": 2048,
        "proj_output_dim": 2048,
        "lamb": 0.0051,
        "scale_loss": 0.1,
        "optimizer": "lars",
        "lr": 0.3,
        "weight_decay": 1e-4,
        "batch_size": 256,
        "warmup_epochs": 10,
        "max_epochs": 400,
        "augmentations": "asymmetric",
    }

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 512,
        lamb: float = 0.0051,
        scale_loss: float = 0.1,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.scale_loss = scale_loss
        self.projection_head = BarlowTwinsProjectionHead(self.feature_dim, proj_hidden_dim, proj_output_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=lamb)

    def train_transform(self) -> Callable[[Image.Image | np.ndarray], list[Tensor]]:
        return two_view_transform(self.input_size, asymmetric=True, **self.view_options)

    def ssl_step(self, views: list[Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        features = [self.backbone(v) for v in views[:2]]
        z0, z1 = (self.projection_head(f) for f in features)
        loss: Tensor = self.scale_loss * self.criterion(z0, z1)
        return loss, features[0]
