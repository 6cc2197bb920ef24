"""The shared base of the SSL methods (solo-learn's ``BaseMethod``, trimmed to what histo needs).

``SSLMethod`` owns the backbone and every option the methods share (passed through as ``**options``:
a method file holds only its heads, loss and defaults), the optimiser (LARS, SGD or AdamW; bias and
norm parameters excluded from weight decay and from LARS adaptation), the per-step linear warm-up +
cosine schedule, and the online weighted k-NN monitor. A method subclass adds its heads and loss in
:meth:`SSLMethod.ssl_step` and its views in :meth:`SSLMethod.train_transform`.

Two recipes (:class:`Recipe`): a random start gets the method's solo-learn optimisation
(``SOLO_LEARN_DEFAULTS``); a pretrained start (``init="imagenet"`` or ``backbone_weights``) gets
:data:`FINETUNE`, measured for continued SSL on little data. Any option given explicitly wins.

Learning rates are given for a batch of 256 and scaled linearly, ``lr * batch_size / 256``, as
solo-learn does (``solo/args/pretrain.py``; its imagenet-100 configs use 2 GPUs x 128 = 256, so
their ``lr`` is the per-256 rate). Warm-up starts at solo-learn's ``warmup_start_lr`` 3e-5 and the
cosine decays to 0 (``solo/methods/base.py`` defaults). The schedule is laid over the Trainer's
``estimated_stepping_batches``; warm-up takes the fraction ``warmup_epochs / max_epochs`` of it.
``warmup_epochs=None`` means solo-learn's 10 epochs, but at most a tenth of ``max_epochs`` (so a
10-epoch run warms up for 1 epoch).

Batches: training ``(views, labels)`` as a default-collated DataLoader gives it for a Dataset that
returns ``(list_of_view_tensors, int_label)``; a label of -1 means unlabelled. Validation
``(images, labels)`` through the evaluation transform. The k-NN monitor (solo-learn's
``WeightedKNNClassifier``: cosine similarity, k = 20, T = 0.07) keeps backbone features of the first
view of labelled training samples seen this epoch and of labelled validation samples, and logs
``val_knn_acc`` (a fraction in 0..1) at the end of each validation epoch in which both exist;
otherwise it logs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor, nn

from histo.encoders.backbones import Init, backbone_spec, create_backbone
from histo.encoders.backbones import freeze_stages as freeze_backbone_stages
from histo.encoders.transforms import EvalTransform, eval_transform, two_view_transform
from histo.errors import InvalidInputError

Optimizer = Literal["lars", "sgd", "adamw"]
OPTIMIZERS: tuple[str, ...] = ("lars", "sgd", "adamw")
WARMUP_START_LR = 3e-5  # solo-learn scheduler.warmup_start_lr default
WARMUP_EPOCHS = 10  # solo-learn scheduler.warmup_epochs default (of 400 epochs in its configs)
LARS_ETA = 0.02  # solo-learn imagenet-100 configs: optimizer.kwargs.eta
MOMENTUM = 0.9  # solo-learn default momentum for LARS and SGD
KNN_MAX_TRAIN = 32768  # cap on remembered training features (FIFO) to bound memory


@dataclass(frozen=True)
class Recipe:
    """How a run optimises: optimiser, lr per 256 samples, decay, warm-up share, head lr, batch norm."""

    optimizer: str
    lr: float
    weight_decay: float
    warmup_fraction: float = 0.1
    head_lr_scale: float = 1.0
    freeze_bn: bool = False
    freeze_stages: float = 0.0
    wise_alpha: float = 1.0  # the saved backbone: alpha * tuned + (1 - alpha) * initial weights
    crop_scale: tuple[float, float] | None = None  # None: the method's own (SimCLR 0.08-1, SwAV 0.14-1)
    local_crop_scale: tuple[float, float] | None = None


# Continued SSL from pretrained weights (Kang et al., CVPR 2023), chosen by measurement on the synthetic
# sets (single-seed trials, listed in the README's "Encoders" section; ``python -m benchmarks.ssl_quality``
# for the 3-seed result), not copied from the
# from-scratch defaults: plain SGD at a small rate, the new heads 10x faster, a short warm-up; the
# first three quarters of the backbone's stages frozen (EfficientNet-Lite0: stem and 12 of 16 blocks)
# and every batch-norm layer kept at its ImageNet statistics; crops that change the apparent size of a
# nucleus by at most 1.4x (magnification is fixed in histology and nuclear size is diagnostic); and
# the saved backbone averaged half-and-half with its start (WiSE-FT), which kept what SSL on one data
# set gained there without losing what the ImageNet start gave on the others.
FINETUNE = Recipe(
    optimizer="sgd",
    lr=0.01,
    weight_decay=1e-5,
    warmup_fraction=0.1,
    head_lr_scale=10.0,
    freeze_bn=True,
    freeze_stages=0.75,
    wise_alpha=0.5,
    crop_scale=(0.5, 1.0),
    local_crop_scale=(0.12, 0.25),
)


def recipe_for(solo_learn: Mapping[str, Any], pretrained: bool) -> Recipe:
    """The fine-tuning recipe for a pretrained start, else the method's solo-learn optimisation."""
    if pretrained:
        return FINETUNE
    return Recipe(str(solo_learn["optimizer"]), float(solo_learn["lr"]), float(solo_learn["weight_decay"]))


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017, https://arxiv.org/abs/1708.03888) as solo-learn has it (``solo/utils/lars.py``).

    SGD with momentum whose step for a parameter is scaled by ``eta * ||w|| / (||g|| + wd * ||w||)``,
    clipped so that the effective rate never exceeds ``lr`` (``clip_lr``). Parameter groups with
    ``lars_exclude=True`` (biases and norm layers) get neither the scaling nor weight decay, which is
    solo-learn's ``exclude_bias_n_norm: True``. lightly's ``LARS`` has no ``clip_lr``, hence this copy.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = MOMENTUM,
        weight_decay: float = 0.0,
        eta: float = LARS_ETA,
        clip_lr: bool = True,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise InvalidInputError(
                f"LARS needs lr >= 0, momentum >= 0, weight_decay >= 0, eta > 0; got {lr}, {momentum}, "
                f"{weight_decay}, {eta}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "clip_lr": clip_lr,
            "eps": eps,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if not group["lars_exclude"]:
                    p_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    if p_norm > 0 and g_norm > 0:
                        trust = group["eta"] * p_norm / (g_norm + p_norm * wd + group["eps"])
                        if group["clip_lr"] and lr > 0:
                            trust = torch.clamp(trust / lr, max=1.0)
                        d_p = d_p.add(p, alpha=wd).mul(trust)
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(d_p)
                    d_p = state["momentum_buffer"]
                p.add_(d_p, alpha=-lr)
        return loss


class WarmupCosine:
    """LambdaLR factor: linear warm-up from ``start_factor`` to 1, then cosine to ``end_factor``.

    A callable object rather than a lambda so that the scheduler's state (and a resumed run) pickles.
    """

    def __init__(self, warmup_steps: float, total_steps: int, start_factor: float, end_factor: float = 0.0):
        self.warmup_steps = float(warmup_steps)
        self.total_steps = int(total_steps)
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        span = max(1.0, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.end_factor + (1.0 - self.end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights (decayed, LARS-adapted) and biases / norm parameters (neither)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in params.parameters() if isinstance(params, nn.Module) else params:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_exclude": False}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


@torch.no_grad()
def weighted_knn_predict(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, k: int = 20, t: float = 0.07
) -> Tensor:
    """Class predictions of solo-learn's weighted k-NN: cosine top-k, votes weighted ``exp(sim / t)``."""
    train = nn.functional.normalize(train_features.float(), dim=1)
    test = nn.functional.normalize(test_features.float(), dim=1)
    n_classes = int(train_labels.max().item()) + 1
    k = min(k, train.shape[0])
    predictions = []
    chunk = max(1, int(5e6) // max(1, train.shape[0]))
    for start in range(0, test.shape[0], chunk):
        sims, idx = (test[start : start + chunk] @ train.T).topk(k, dim=1)
        weights = (sims / t).exp()
        votes = torch.zeros(sims.shape[0], n_classes, device=sims.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def weighted_knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    t: float = 0.07,
) -> float:
    """Fraction of ``test`` samples whose weighted k-NN prediction is their label."""
    predicted = weighted_knn_predict(train_features, train_labels, test_features, k, t)
    return float((predicted == test_labels.to(predicted.device)).float().mean().item())


class SSLMethod(pl.LightningModule):
    """Shared base: backbone, optimiser, warm-up + cosine schedule and the online k-NN monitor.

    Subclasses set ``method_name`` (the registry name) and ``SOLO_LEARN_DEFAULTS`` (the values of
    the solo-learn config they follow), build their heads after ``super().__init__`` and implement
    :meth:`ssl_step`. ``forward`` is the backbone alone: what gets embedded later.
    """

    method_name: ClassVar[str] = ""
    SOLO_LEARN_DEFAULTS: ClassVar[dict[str, Any]] = {}
    min_views: ClassVar[int] = 2

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_weights: Path | None = None,
        init: Init = "random",
        input_size: int = 224,
        max_epochs: int = 100,
        batch_size: int = 256,
        lr: float | None = None,
        weight_decay: float | None = None,
        optimizer: Optimizer | None = None,
        warmup_epochs: float | None = None,
        head_lr_scale: float | None = None,
        freeze_bn: bool | None = None,
        freeze_stages: float | None = None,
        wise_alpha: float | None = None,
        knn_k: int = 20,
        knn_t: float = 0.07,
    ) -> None:
        """Options every method shares; ``None`` takes the recipe's value (see :func:`recipe_for`).

        A backbone that starts from weights (``init="imagenet"`` or ``backbone_weights``) gets the
        fine-tuning recipe, a random one the method's solo-learn defaults.
        """
        super().__init__()
        pretrained = init == "imagenet" or backbone_weights is not None
        recipe = recipe_for(self.SOLO_LEARN_DEFAULTS, pretrained)
        lr = recipe.lr if lr is None else lr
        weight_decay = recipe.weight_decay if weight_decay is None else weight_decay
        chosen_optimizer = recipe.optimizer if optimizer is None else optimizer
        if chosen_optimizer not in OPTIMIZERS:
            raise InvalidInputError(
                f"unknown optimizer {chosen_optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if warmup_epochs is None:
            warmup_epochs = min(WARMUP_EPOCHS, max_epochs * recipe.warmup_fraction)
        head_lr_scale = recipe.head_lr_scale if head_lr_scale is None else head_lr_scale
        checks = [
            (input_size >= 32, f"input size {input_size} is too small; use at least 32 px"),
            (max_epochs >= 1, f"max_epochs {max_epochs} must be at least 1"),
            (batch_size >= 2, f"batch size {batch_size} must be at least 2 (the losses contrast samples)"),
            (lr > 0 and head_lr_scale > 0, f"learning rate {lr} (heads x{head_lr_scale}) must be positive"),
            (weight_decay >= 0, f"weight decay {weight_decay} must be >= 0"),
            (0 <= warmup_epochs < max_epochs, f"warmup_epochs {warmup_epochs} must lie in 0..max_epochs"),
            (knn_k >= 1 and knn_t > 0, f"k-NN needs k >= 1 and t > 0, got k={knn_k}, t={knn_t}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)
        # The weights file is not needed to rebuild a checkpoint (its tensors are in the state dict),
        # and neither is the init: the checkpoint's weights replace it.
        self.save_hyperparameters(ignore=["backbone_weights"])
        self.backbone_name = backbone
        self.backbone_weights = str(backbone_weights) if backbone_weights is not None else None
        self.init = init
        self.pretrained = pretrained
        self.backbone, self.feature_dim = create_backbone(backbone, backbone_weights, init)
        self.freeze_stages = recipe.freeze_stages if freeze_stages is None else freeze_stages
        self.frozen_stages = freeze_backbone_stages(self.backbone, backbone, self.freeze_stages)
        spec = backbone_spec(backbone)
        self.mean, self.std = tuple(spec.mean), tuple(spec.std)
        self.crop_scale, self.local_crop_scale = recipe.crop_scale, recipe.local_crop_scale
        self.wise_alpha = recipe.wise_alpha if wise_alpha is None else wise_alpha
        if not 0 <= self.wise_alpha <= 1:
            raise InvalidInputError(
                f"wise_alpha {self.wise_alpha} weighs tuned against initial weights; use 0..1"
            )
        self.input_size = input_size
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name: str = chosen_optimizer
        self.warmup_epochs = warmup_epochs
        self.head_lr_scale = head_lr_scale
        self.freeze_bn = recipe.freeze_bn if freeze_bn is None else freeze_bn
        self.knn_k = knn_k
        self.knn_t = knn_t
        self._knn_train: list[tuple[Tensor, Tensor]] = []
        self._knn_val: list[tuple[Tensor, Tensor]] = []

    # ----------------------------------------------------------------- what subclasses provide
    def ssl_step(self, views: list[Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        """The method's loss on one batch of views, and the backbone features of the first view."""
        raise NotImplementedError

    def train_transform(self) -> Callable[[Image.Image | np.ndarray], list[Tensor]]:
        """The method's training views of one image (default: two symmetric histology views)."""
        return two_view_transform(self.input_size, **self.view_options)

    @property
    def view_options(self) -> dict[str, Any]:
        """Normalisation of the backbone's weights and the recipe's crop scale, for every view."""
        scale = {"scale": self.crop_scale} if self.crop_scale else {}
        return {"mean": self.mean, "std": self.std, **scale}

    def eval_transform(self) -> EvalTransform:
        """Resize + normalise at this model's input size (what validation and embedding use)."""
        return eval_transform(self.input_size, self.mean, self.std)

    def hold_batch_norm(self) -> None:
        """With ``freeze_bn``, the backbone's batch-norm layers normalise with their pretrained
        statistics and never update them, whatever mode Lightning set (it restores each submodule's
        own mode around validation, so overriding ``train()`` is not enough)."""
        if not self.freeze_bn:
            return
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    # ----------------------------------------------------------------- Lightning hooks
    def forward(self, x: Tensor) -> Tensor:
        """Backbone features, ``B x feature_dim``."""
        out: Tensor = self.backbone(x)
        return out

    @property
    def scaled_lr(self) -> float:
        """``lr * batch_size / 256`` (solo-learn's linear scaling rule)."""
        return self.lr * self.batch_size / 256

    def _split_batch(self, batch: Any) -> tuple[list[Tensor], Tensor]:
        if isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], (list, tuple)):
            views, labels = list(batch[0]), batch[1]
        elif isinstance(batch, (list, tuple)) and all(isinstance(v, Tensor) and v.ndim == 4 for v in batch):
            views, labels = list(batch), None
        else:
            raise InvalidInputError(
                "a training batch must be (views, labels) with views a list of B x 3 x H x W tensors; "
                "let the Dataset return (train_transform()(image), label) and use the default collate"
            )
        if len(views) < self.min_views:
            raise InvalidInputError(
                f"{self.method_name} needs at least {self.min_views} views per image, got {len(views)}; "
                "build the Dataset with model.train_transform()"
            )
        n = views[0].shape[0]
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.long, device=views[0].device)
        return views, torch.as_tensor(labels, device=views[0].device).long().view(-1)

    def on_fit_start(self) -> None:
        """Channels-last during training: about 2x faster convolutions on CPU for EfficientNet-Lite0."""
        self.backbone.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        self.backbone.to(memory_format=torch.contiguous_format)
        if self.pretrained and self.wise_alpha < 1:
            self.average_with_init(self.wise_alpha)

    @torch.no_grad()
    def average_with_init(self, alpha: float) -> None:
        """WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022,
        https://arxiv.org/abs/2109.01903): backbone = alpha * tuned + (1 - alpha) * initial weights.

        Fine-tuning on one data set trades robustness on others for gains on it; the average keeps
        most of both. The initial weights are rebuilt (ImageNet or the given file), so a resumed run
        averages with the same start. Checkpoints keep the tuned weights; the artifact gets the average.
        """
        weights = Path(self.backbone_weights) if self.backbone_weights else None
        start, _ = create_backbone(self.backbone_name, weights, self.init)
        initial = start.state_dict()
        for key, value in self.backbone.state_dict().items():
            if value.is_floating_point():
                value.mul_(alpha).add_(initial[key].to(value), alpha=1 - alpha)

    @property
    def total_steps(self) -> int:
        """Optimiser steps this run will take (Lightning's estimate; 1 outside a Trainer)."""
        trainer = self._trainer
        total = trainer.estimated_stepping_batches if trainer is not None else 1
        return int(total) if math.isfinite(total) and total >= 1 else 1

    def batch_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, first-view features and labels of one training batch (channels-last views)."""
        self.hold_batch_norm()
        views, labels = self._split_batch(batch)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        loss, features = self.ssl_step(views, labels)
        return loss, features, labels

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, features, labels = self.batch_loss(batch)
        self.log(
            "train_loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(labels)
        )
        self._remember(self._knn_train, features, labels, cap=KNN_MAX_TRAIN)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        features = self(images)
        self._remember(
            self._knn_val, features, torch.as_tensor(labels, device=features.device).long().view(-1)
        )

    def on_train_epoch_start(self) -> None:
        self._knn_train.clear()

    def on_validation_epoch_end(self) -> None:
        accuracy = self.knn_accuracy()
        self._knn_val.clear()
        if accuracy is not None:
            self.log("val_knn_acc", accuracy, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["histo"] = {
            "method": self.method_name,
            "backbone": self.backbone_name,
            "backbone_weights": self.backbone_weights,
            "input_size": self.input_size,
            "feature_dim": self.feature_dim,
        }

    # ----------------------------------------------------------------- k-NN monitor
    @staticmethod
    def _remember(
        bank: list[tuple[Tensor, Tensor]], features: Tensor, labels: Tensor, cap: int | None = None
    ) -> None:
        keep = labels >= 0
        if not bool(keep.any()):
            return
        bank.append((features.detach()[keep].float(), labels[keep].detach()))
        if cap is not None:
            while sum(len(y) for _, y in bank) - len(bank[0][1]) >= cap:
                bank.pop(0)

    def knn_accuracy(self) -> float | None:
        """Weighted k-NN accuracy of the remembered validation features, or None without labels."""
        if not self._knn_train or not self._knn_val:
            return None
        train_x = torch.cat([x for x, _ in self._knn_train])
        train_y = torch.cat([y for _, y in self._knn_train])
        val_x = torch.cat([x for x, _ in self._knn_val]).to(train_x.device)
        val_y = torch.cat([y for _, y in self._knn_val]).to(train_x.device)
        return weighted_knn_accuracy(train_x, train_y, val_x, val_y, self.knn_k, self.knn_t)

    # ----------------------------------------------------------------- optimiser and schedule
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone groups at the scaled lr; heads at ``head_lr_scale`` times it when that is not 1."""
        if self.head_lr_scale == 1:
            return parameter_groups(self, self.weight_decay)
        backbone = {id(p) for p in self.backbone.parameters()}
        heads = [p for p in self.parameters() if id(p) not in backbone]
        groups = parameter_groups(self.backbone, self.weight_decay)
        for group in parameter_groups(heads, self.weight_decay):
            groups.append({**group, "lr": self.scaled_lr * self.head_lr_scale})
        return groups

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        lr = self.scaled_lr
        optimizer: torch.optim.Optimizer
        if self.optimizer_name == "lars":
            optimizer = LARS(groups, lr=lr, momentum=MOMENTUM, weight_decay=self.weight_decay, eta=LARS_ETA)
        elif self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(
                _plain(groups), lr=lr, momentum=MOMENTUM, weight_decay=self.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(_plain(groups), lr=lr, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise InvalidInputError(
                "the learning-rate schedule needs a finite number of steps; "
                "give the Trainer max_epochs or max_steps"
            )
        warmup_steps = total * self.warmup_epochs / self.max_epochs
        schedule = WarmupCosine(warmup_steps, int(total), start_factor=min(1.0, WARMUP_START_LR / lr))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


def _plain(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameter groups without the LARS-only key, for torch's own optimisers."""
    return [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
