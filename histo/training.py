"""``train(config) -> artifact``: one SSL method on a data set's tiles, saved as an encoder artifact.

Lightning runs the loop (progress bar, CSV and TensorBoard logs, checkpoints, resume, DDP on all
GPUs, bf16 where the GPU has it); the method module comes from the registry. When the data has
labels, a held-out set of leakage groups (the ``val`` split where the data set has one) feeds the
online kNN monitor, so its accuracy is never measured on slides the encoder trained on.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from histo.data.datasets import scan_dataset
from histo.data.tile_cache import TileSet, load_tile_set
from histo.data.tiling import TilingConfig
from histo.encoders.artifact import ArtifactMeta, save_artifact
from histo.encoders.registry import create_encoder, get_spec
from histo.encoders.tile_datasets import EvalTiles, ViewTiles, label_indices, monitor_split
from histo.encoders.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from histo.errors import InvalidInputError

DEFAULT_ORIENTATION_POOLING = 4


@dataclass
class TrainConfig:
    """What ``histocli train`` passes down; every value is explicit, nothing read from the environment."""

    method: str
    data: Path
    dataset: str
    home: Path
    out: Path | None = None
    epochs: int = 10
    batch_size: int = 64
    backbone: str = "resnet18"
    backbone_weights: Path | None = None
    input_size: int = 224
    devices: str = "auto"
    precision: str = "auto"
    resume: bool = False
    max_minutes: float | None = None
    num_workers: int | None = None
    seed: int = 0
    tiling: TilingConfig = field(default_factory=TilingConfig)
    max_pixels: int = 250_000_000
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    @property
    def artifact_dir(self) -> Path:
        return self.out or self.home / "encoders" / self.method

    @property
    def run_name(self) -> str:
        return self.artifact_dir.name


def hardware(devices: str, precision: str) -> dict[str, Any]:
    """Trainer arguments: all GPUs with DDP when there are several, else the CPU; bf16 where supported."""
    gpus = torch.cuda.device_count()
    if devices == "cpu" or gpus == 0:
        if devices not in ("auto", "cpu", "1"):
            raise InvalidInputError(f"--devices {devices}: no GPU here; use --devices auto or cpu")
        chosen = {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
    else:
        count = gpus if devices == "auto" else int(devices)
        chosen = {"accelerator": "gpu", "devices": count, "strategy": "ddp" if count > 1 else "auto"}
    if precision == "auto":
        bf16 = chosen["accelerator"] == "gpu" and torch.cuda.is_bf16_supported()
        precision = "bf16-mixed" if bf16 else "32-true"
    return {**chosen, "precision": precision}


class EpochFigures(Callback):
    """Collects seconds, loss and kNN accuracy per epoch for the artifact's training record."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
        }
        row = {"epoch": trainer.current_epoch, "seconds": time.perf_counter() - self._start}
        row.update({k: metrics[k] for k in ("train_loss", "val_knn_acc") if k in metrics})
        self.epochs.append(row)


def train(config: TrainConfig) -> Path:
    """Train ``config.method`` on the tiles of ``config.data`` and save the encoder artifact."""
    if get_spec(config.method).kind != "ssl":
        raise InvalidInputError(
            f"{config.method!r} is a baseline, not a trainable method; see `histocli encoders`"
        )
    pl.seed_everything(config.seed, workers=True, verbose=False)
    scan = scan_dataset(config.data, config.dataset)
    tiles, problems = load_tile_set(
        scan.records, config.tiling, config.max_pixels, config.home / "cache", config.progress
    )
    epochs = config.epochs
    if config.max_minutes:
        epochs = epochs_within(config, tiles, config.max_minutes * 60)
    model = _create(config, epochs)
    train_loader, val_loader = _loaders(tiles, model, config)
    figures = EpochFigures()
    trainer = _trainer(config, figures, epochs, has_val=val_loader is not None)
    ckpt = config.home / "checkpoints" / config.run_name / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(
        model, train_loader, val_loader, ckpt_path=str(ckpt) if config.resume and ckpt.exists() else None
    )
    seconds = time.perf_counter() - started
    if trainer.global_rank != 0:
        return config.artifact_dir
    meta = _meta(config, model, tiles, len(problems), figures, seconds, trainer.global_step)
    return save_artifact(config.artifact_dir, meta, model.backbone.state_dict())


def _loaders(tiles: TileSet, model: Any, config: TrainConfig) -> tuple[DataLoader, DataLoader | None]:
    train_idx, val_idx = monitor_split(tiles, seed=config.seed)
    if len(train_idx) < 2:
        raise InvalidInputError(
            f"only {len(train_idx)} training tiles; SSL needs at least 2 (add data or lower --min-tissue)"
        )
    labels = label_indices(tiles)
    workers = (
        config.num_workers if config.num_workers is not None else max(0, min(8, (os.cpu_count() or 1) - 1))
    )
    common: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    batch = min(config.batch_size, len(train_idx))
    train_set = ViewTiles(tiles.pixels, train_idx, labels, model.train_transform())
    train_loader = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=True, **common)
    if not len(val_idx):
        return train_loader, None
    evaluation = eval_transform(config.input_size, IMAGENET_MEAN, IMAGENET_STD)
    val_set = EvalTiles(tiles.pixels, val_idx, labels, evaluation)
    return train_loader, DataLoader(val_set, batch_size=batch, shuffle=False, **common)


def _create(config: TrainConfig, epochs: int) -> Any:
    return create_encoder(
        config.method,
        backbone=config.backbone,
        backbone_weights=config.backbone_weights,
        input_size=config.input_size,
        max_epochs=epochs,
        batch_size=config.batch_size,
        **config.method_kwargs,
    )


def epochs_within(config: TrainConfig, tiles: TileSet, seconds: float) -> int:
    """How many epochs fit a time budget, timed on real steps, so the LR schedule spans the budget.

    A run cut short by a wall clock would otherwise end inside its warm-up with a tiny LR. Two
    forward/backward passes are timed (the second counts) on a throwaway copy of the model; 15 %
    of the budget is kept for validation and saving. ``max_time`` still stops the run hard.
    """
    model = _create(config, config.epochs)
    loader, _ = _loaders(tiles, model, replace(config, num_workers=0))
    batches = iter(loader)
    elapsed = 0.0
    for step in range(2):
        started = time.perf_counter()  # includes decoding and augmenting the batch
        batch = next(batches, None)
        if batch is None:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log() outside a Trainer: expected here
            _loss(model, batch, step).backward()
        elapsed = time.perf_counter() - started
        model.zero_grad(set_to_none=True)
    per_epoch = max(elapsed, 1e-3) * max(1, len(loader))
    return int(max(1, min(config.epochs, seconds * 0.85 // per_epoch)))


def _loss(model: Any, batch: Any, step: int) -> torch.Tensor:
    out = model.training_step(batch, step)
    return out["loss"] if isinstance(out, dict) else out


def _trainer(config: TrainConfig, figures: EpochFigures, epochs: int, has_val: bool) -> pl.Trainer:
    logs = config.home / "logs" / "train"
    return pl.Trainer(
        max_epochs=epochs,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        logger=[CSVLogger(logs, name=config.run_name), TensorBoardLogger(logs, name=config.run_name)],
        callbacks=[
            figures,
            ModelCheckpoint(
                dirpath=config.home / "checkpoints" / config.run_name, save_last=True, save_top_k=0
            ),
            *([TQDMProgressBar(refresh_rate=1)] if config.progress else []),
        ],
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        limit_val_batches=1.0 if has_val else 0,
        deterministic=False,
        **hardware(config.devices, config.precision),
    )


def _meta(
    config: TrainConfig,
    model: Any,
    tiles: TileSet,
    failed: int,
    figures: EpochFigures,
    seconds: float,
    steps: int,
) -> ArtifactMeta:
    labels = [label for label in tiles.labels if label is not None]
    per_label = {name: labels.count(name) for name in tiles.label_names()}
    last = figures.epochs[-1] if figures.epochs else {}
    return ArtifactMeta(
        name=config.run_name,
        kind="ssl",
        method=config.method,
        architecture=model.backbone_name,
        embedding_dim=int(model.feature_dim),
        input_size=config.input_size,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        orientation_pooling=DEFAULT_ORIENTATION_POOLING,
        data={
            "dataset": config.dataset,
            "root": str(config.data),
            "tiles": len(tiles),
            "groups": len(set(tiles.groups)),
            "labels": per_label,
            "failed_images": failed,
            "tile_size": config.tiling.tile_size,
        },
        training={
            "epochs": len(figures.epochs),
            "steps": steps,
            "batch_size": config.batch_size,
            "seconds": round(seconds, 2),
            "seconds_per_epoch": float(np.median([e["seconds"] for e in figures.epochs]))
            if figures.epochs
            else None,
            "final_loss": last.get("train_loss"),
            "val_knn_acc": last.get("val_knn_acc"),
            "history": figures.epochs,
            "hparams": {k: _plain(v) for k, v in dict(model.hparams).items()},
        },
    )


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool | type(None)) else str(value)
