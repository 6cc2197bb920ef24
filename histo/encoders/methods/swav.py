"""SwAV: online clustering, predicting one view's Sinkhorn codes from the other views."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from PIL import Image
from torch import Tensor, nn

from histo.encoders.methods.base import SSLMethod
from histo.encoders.registry import register_encoder
from histo.encoders.transforms import local_size_for, multicrop_transform
from histo.errors import InvalidInputError


@register_encoder(
    "swav", kind="ssl", summary="SwAV: swapped prediction of Sinkhorn cluster codes, multi-crop"
)
class SwAV(SSLMethod):
    """SwAV (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", NeurIPS 2020, https://arxiv.org/abs/2006.09882).

    Defaults are solo-learn's ``scripts/pretrain/imagenet-100/swav.yaml`` with
    ``solo/methods/swav.py``: projector 512-2048-128 with batch norm (lightly's
    ``SwaVProjectionHead``), 3000 prototypes (``SwaVPrototypes``, kept on the unit sphere and, as in
    the paper and solo-learn, without bias), temperature 0.1, 3 Sinkhorn iterations with epsilon
    0.05 (``SwaVLoss``), a queue of 3840 embeddings per large crop that joins the Sinkhorn
    assignment from epoch 50, prototypes frozen for the first 2 epochs, LARS (eta 0.02, clip_lr,
    biases and norms excluded) at lr 0.6 per 256 samples, weight decay 1e-6, 10 warm-up epochs.
    Multi-crop: solo-learn's imagenet-100 SwAV config uses two 224 crops only; its
    ``imagenet-100-multicrop`` configs and the paper add six 96 px crops, which we follow (2 global
    + 6 local, local size 96/224 of ``input_size``, crop scales 0.14-1 and 0.05-0.14 as in the paper).

    All defaults are kept for small batches: at batch 32 on synthetic H&E the loss fell from 8.34 to
    7.96 in 60 steps without a spike (``benchmarks/results/small_batch_stability.json``); in a
    30-step trial 300 prototypes instead of 3000 was no steadier. The queue, which the paper
    recommends below batch 256, joins after the share ``queue_starts`` of the run (solo-learn:
    epoch 50 of 400, so 1/8) and the prototypes stay frozen for the share ``freeze_prototypes``
    (2 of 400 epochs): both scale with the run's length in steps, not with epoch numbers meant for
    400-epoch runs. The queue holds at most what the run fills before it joins.
    """

    method_name: ClassVar[str] = "swav"
    SOLO_LEARN_DEFAULTS: ClassVar[dict[str, Any]] = {
        "source": "scripts/pretrain/imagenet-100/swav.yaml",
        "proj_hidden_dim": 2048,
        "proj_output_dim": 128,
        "num_prototypes": 3000,
        "temperature": 0.1,
        "sk_iters": 3,
        "sk_epsilon": 0.05,
        "queue_size": 3840,
        "epoch_queue_starts": 50,
        "freeze_prototypes_epochs": 2,
        "optimizer": "lars",
        "lr": 0.6,
        "weight_decay": 1e-6,
        "batch_size": 256,
        "warmup_epochs": 10,
        "max_epochs": 400,
        "n_global_crops": 2,
        "n_local_crops": 6,
        "crop_sizes": (224, 96),
    }

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        sk_iters: int = 3,
        sk_epsilon: float = 0.05,
        queue_size: int = 3840,
        queue_starts: float = 50 / 400,
        freeze_prototypes: float = 2 / 400,
        n_global_crops: int = 2,
        n_local_crops: int = 6,
        local_crop_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if n_global_crops < 2 or n_local_crops < 0:
            raise InvalidInputError(
                f"SwAV needs n_global_crops >= 2 and n_local_crops >= 0, "
                f"got {n_global_crops} and {n_local_crops}"
            )
        if queue_size < 0 or num_prototypes < 2:
            raise InvalidInputError(
                f"queue_size {queue_size} must be >= 0, num_prototypes {num_prototypes} >= 2"
            )
        self.n_global_crops = n_global_crops
        self.n_local_crops = n_local_crops
        self.local_crop_size = local_crop_size or local_size_for(self.input_size)
        self.queue_size = queue_size
        if not (0 <= queue_starts <= 1 and 0 <= freeze_prototypes <= 1):
            raise InvalidInputError(
                f"queue_starts {queue_starts} and freeze_prototypes {freeze_prototypes} are shares of the "
                "run; use values in 0..1"
            )
        self.queue_starts = queue_starts
        self.freeze_prototypes = freeze_prototypes
        self.projection_head = SwaVProjectionHead(self.feature_dim, proj_hidden_dim, proj_output_dim)
        self.prototypes = SwaVPrototypes(proj_output_dim, num_prototypes)
        for head in self.prototypes.heads:  # cosine scores against unit prototypes, as in the paper
            head.register_parameter("bias", None)
        self.criterion = SwaVLoss(
            temperature=temperature, sinkhorn_iterations=sk_iters, sinkhorn_epsilon=sk_epsilon
        )
        self.queue: Tensor
        self.queue_ptr: Tensor
        self.queue_filled: Tensor
        self.register_buffer("queue", torch.zeros(n_global_crops, queue_size, proj_output_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @property
    def min_views(self) -> int:  # type: ignore[override]
        return self.n_global_crops

    def train_transform(self) -> Callable[[Image.Image | np.ndarray], list[Tensor]]:
        scales: dict[str, Any] = {}
        if self.crop_scale:
            scales["global_scale"] = self.crop_scale
        if self.local_crop_scale:
            scales["local_scale"] = self.local_crop_scale
        return multicrop_transform(
            self.input_size,
            self.local_crop_size,
            n_global=self.n_global_crops,
            n_local=self.n_local_crops,
            mean=self.mean,
            std=self.std,
            **scales,
        )

    @property
    def queue_start_step(self) -> int:
        """The step from which the queue joins: ``queue_starts`` of the run (solo-learn: epoch 50 of 400)."""
        return math.ceil(self.queue_starts * self.total_steps)

    def queue_length(self, batch: int) -> int:
        """The queue's used length: ``queue_size``, but no more than the run fills before it joins."""
        return min(self.queue_size, max(batch, batch * self.queue_start_step))

    def _queue_ready(self, batch: int) -> bool:
        return (
            self.queue_size > 0
            and self.global_step >= self.queue_start_step
            and int(self.queue_filled) >= self.queue_length(batch)
        )

    @torch.no_grad()
    def _enqueue(self, z: list[Tensor]) -> None:
        batch = z[0].shape[0]
        if self.queue_size == 0:
            return
        length = self.queue_length(batch)
        n = min(batch, length)
        idx = (int(self.queue_ptr) + torch.arange(n, device=self.queue.device)) % length
        for i, zi in enumerate(z):
            self.queue[i, idx] = zi[-n:].detach().to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % length)
        self.queue_filled.fill_(min(length, int(self.queue_filled) + n))

    def ssl_step(self, views: list[Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            self.prototypes.normalize()
        features = [self.backbone(v) for v in views]
        z = [nn.functional.normalize(self.projection_head(f), dim=1) for f in features]
        scores = [self.prototypes(zi) for zi in z]
        n_global = self.n_global_crops
        queue_scores = None
        if self._queue_ready(len(labels)):
            length = self.queue_length(len(labels))
            with torch.no_grad():
                queue_scores = [self.prototypes(self.queue[i, :length]) for i in range(n_global)]
        loss: Tensor = self.criterion(scores[:n_global], scores[n_global:], queue_scores).squeeze()
        self._enqueue(z[:n_global])
        return loss, features[0]

    def on_after_backward(self) -> None:
        """Keep the prototypes fixed for the first ``freeze_prototypes`` of the run (solo-learn: 2 of
        400 epochs), at least one step."""
        if self.global_step < max(1, math.ceil(self.freeze_prototypes * self.total_steps)):
            for p in self.prototypes.parameters():
                p.grad = None
