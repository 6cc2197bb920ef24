"""One progress bar per training run: optimiser steps, loss, steps/s and the kNN monitor.

Lightning's own bar starts afresh every epoch, and a short run on a small data set has hundreds of
one-batch epochs; this bar counts the run's steps instead (tqdm shows the rate as ``step/s``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from tqdm import tqdm

from histo.ingest import default_workers

__all__ = ["StepProgress", "default_workers"]


class StepProgress(Callback):
    """A tqdm bar over ``trainer.max_steps`` with the latest loss and kNN accuracy as postfix."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.bar = tqdm(total=total, desc=self.description, unit="step", initial=trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        figures = {}
        loss = trainer.callback_metrics.get("train_loss_step")
        if isinstance(loss, torch.Tensor):
            figures["loss"] = f"{float(loss):.3f}"
        knn = trainer.callback_metrics.get("val_knn_acc")
        if isinstance(knn, torch.Tensor):
            figures["knn"] = f"{float(knn):.3f}"
        self.bar.set_postfix(figures, refresh=False)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        """Ctrl-C or a failure: the bar ends now, so that the line saying why comes after it."""
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
