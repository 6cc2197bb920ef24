"""``train(config) -> artifact``: one SSL method on a data set's tiles, saved as an encoder artifact.

Lightning runs the loop (CSV and TensorBoard logs, checkpoints, resume, DDP on all GPUs, bf16 where
the GPU has it); the method module comes from the registry. When the data has labels, a held-out
set of leakage groups (the ``val`` split where the data set has one) feeds the online kNN monitor,
so its accuracy is never measured on slides the encoder trained on.

A run is a number of optimiser steps, and the learning-rate schedule spans exactly those: ``steps``,
or ``epochs`` of the data, or — with ``max_minutes`` alone — as many steps as the measured speed
fits in the budget; with none of them, :func:`default_steps` of the data set's size. Lightning's own
output is silenced (:mod:`histo.quiet`); one progress bar shows steps, loss, steps/s and the monitor.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from histo.data.datasets import scan_dataset
from histo.data.tile_cache import TileSet, load_tile_set
from histo.data.tiling import TilingConfig
from histo.encoders import DEFAULT_INPUT_SIZE
from histo.encoders.artifact import ArtifactMeta, save_artifact
from histo.encoders.backbones import EFFICIENTNET
from histo.encoders.registry import create_encoder, get_spec
from histo.encoders.tile_datasets import EvalTiles, ViewTiles, label_indices, monitor_split
from histo.errors import InvalidInputError
from histo.quiet import quiet_training
from histo.training_progress import StepProgress, default_workers

DEFAULT_ORIENTATION_POOLING = 4
MIN_STEPS = 300
DEFAULT_EPOCHS = 100
BUDGET_SHARE = 0.85  # of --minutes for optimiser steps; the rest validates, saves and absorbs timing error
TIMED_STEPS = 3
WARMUP_STEPS = 2
VALIDATIONS_PER_RUN = 5


@dataclass
class TrainConfig:
    """What ``histocli train`` passes down; every value is explicit, nothing read from the environment."""

    method: str
    data: Path
    #: How ``data`` is laid out (``histo.data.datasets.dataset_names``).
    layout: str
    home: Path
    out: Path | None = None
    #: The data set's name, as ingestion names it (default: ``default_dataset_name``).
    dataset_name: str | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    init: str = "imagenet"
    backbone: str | None = None
    backbone_weights: Path | None = None
    input_size: int = DEFAULT_INPUT_SIZE
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

    def __post_init__(self) -> None:
        for name in ("epochs", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {value}")
        if self.max_minutes is not None and not (self.max_minutes > 0 and math.isfinite(self.max_minutes)):
            raise InvalidInputError(
                f"the time budget must be a positive number of minutes, got {self.max_minutes}"
            )
        if self.batch_size < 2:
            raise InvalidInputError(
                f"batch size must be at least 2 (contrastive pairs), got {self.batch_size}"
            )
        if self.input_size < 32:
            raise InvalidInputError(f"input size must be at least 32 px, got {self.input_size}")

    @property
    def dataset(self) -> str:
        """The training data's name in the index (its layout's, or its folder's for ``folder``)."""
        from histo.data.datasets import default_dataset_name

        return self.dataset_name or default_dataset_name(self.layout, self.data)

    @property
    def artifact_dir(self) -> Path:
        return self.out or self.home / "encoders" / self.method

    @property
    def run_name(self) -> str:
        return self.artifact_dir.name

    @property
    def backbone_name(self) -> str:
        """The backbone asked for, else the one whose ImageNet weights ship (pretrained) or ResNet-18."""
        if self.backbone:
            return self.backbone
        return EFFICIENTNET if self.init == "imagenet" and self.backbone_weights is None else "resnet18"


@dataclass
class RunLength:
    """How many optimiser steps a run takes, why, and the speed measured for a time box."""

    steps: int
    reason: str
    steps_per_second: float | None = None


def default_steps(train_tiles: int, batch_size: int) -> int:
    """100 epochs of the data, but never fewer than ``MIN_STEPS`` optimiser steps."""
    return max(MIN_STEPS, DEFAULT_EPOCHS * max(1, train_tiles // max(1, batch_size)))


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
    started = time.perf_counter()
    if get_spec(config.method).kind != "ssl":
        raise InvalidInputError(
            f"{config.method!r} is a baseline, not a trainable method; see `histocli encoders`"
        )
    pl.seed_everything(config.seed, workers=True, verbose=False)
    scan = scan_dataset(config.data, config.layout, config.dataset)
    tiles, problems = load_tile_set(
        scan.records, config.tiling, config.max_pixels, config.home / "cache", config.progress
    )
    with quiet_training():
        model = _create(config, max_epochs=1)
        train_loader, val_loader = _loaders(tiles, model, config)
        deadline = started + config.max_minutes * 60 if config.max_minutes else None
        length = run_length(config, model, train_loader, deadline)
        epochs = max(1, math.ceil(length.steps / max(1, len(train_loader))))
        model = _create(config, max_epochs=epochs)
        figures = EpochFigures()
        trainer = _trainer(config, figures, model, length.steps, epochs, has_val=val_loader is not None)
        ckpt = config.home / "checkpoints" / config.run_name / "last.ckpt"
        fit_started = time.perf_counter()
        try:
            trainer.fit(
                model,
                train_loader,
                val_loader,
                ckpt_path=str(ckpt) if config.resume and ckpt.exists() else None,
            )
        except SystemExit:
            if trainer.interrupted:  # Lightning turns Ctrl-C into sys.exit(1) after its teardown
                raise KeyboardInterrupt from None
            raise
    seconds = time.perf_counter() - fit_started
    if trainer.global_rank != 0:
        return config.artifact_dir
    meta = _meta(config, model, tiles, len(problems), figures, seconds, trainer.global_step, length)
    return save_artifact(config.artifact_dir, meta, model.backbone.state_dict())


def _loaders(tiles: TileSet, model: Any, config: TrainConfig) -> tuple[DataLoader, DataLoader | None]:
    train_idx, val_idx = monitor_split(tiles, seed=config.seed)
    if len(train_idx) < 2:
        raise InvalidInputError(
            f"only {len(train_idx)} training tiles; SSL needs at least 2 (add data or lower --min-tissue)"
        )
    labels = label_indices(tiles)
    workers = config.num_workers if config.num_workers is not None else default_workers()
    common: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    batch = min(config.batch_size, len(train_idx))
    train_set = ViewTiles(tiles.pixels, train_idx, labels, model.train_transform())
    train_loader = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=True, **common)
    if not len(val_idx):
        return train_loader, None
    val_set = EvalTiles(tiles.pixels, val_idx, labels, model.eval_transform())
    return train_loader, DataLoader(val_set, batch_size=batch, shuffle=False, **common)


def _create(config: TrainConfig, max_epochs: int) -> Any:
    return create_encoder(
        config.method,
        backbone=config.backbone_name,
        backbone_weights=config.backbone_weights,
        init=config.init,
        input_size=config.input_size,
        max_epochs=max_epochs,
        batch_size=config.batch_size,
        **config.method_kwargs,
    )


def run_length(config: TrainConfig, model: Any, loader: DataLoader, deadline: float | None) -> RunLength:
    """The run's optimiser steps: asked for (steps or epochs), fitted to the time budget, or the default.

    With a budget, steps are timed for real (decoding, augmenting, forward and backward) on a copy
    of the model, so the schedule spans the budget instead of being cut inside its warm-up;
    ``max_time`` still stops the run hard. Steps and epochs given beside a budget cap it.
    """
    per_epoch = max(1, len(loader))
    wanted = config.steps or (config.epochs * per_epoch if config.epochs else None)
    if deadline is None:
        if wanted:
            return RunLength(wanted, "steps" if config.steps else "epochs")
        return RunLength(default_steps(len(loader.dataset), loader.batch_size or 1), "default")  # type: ignore[arg-type]
    rate = measure_steps_per_second(model, loader, config)
    fits = max(1, int(rate * max(0.0, deadline - time.perf_counter()) * BUDGET_SHARE))
    if wanted and wanted <= fits:
        return RunLength(wanted, "steps" if config.steps else "epochs", rate)
    return RunLength(fits, "minutes", rate)


def measure_steps_per_second(model: Any, loader: DataLoader, config: TrainConfig) -> float:
    """Optimiser steps per second of this model on this data (warm-up steps first: the very first
    steps of a process are slow while the CPU kernels are set up, and would shorten the plan)."""
    device = torch.device(
        "cuda" if hardware(config.devices, config.precision)["accelerator"] == "gpu" else "cpu"
    )
    probe = copy.deepcopy(model).to(device)
    probe.train()
    probe.on_fit_start()
    batches = iter(loader)
    timings = []
    for _ in range(WARMUP_STEPS + TIMED_STEPS):
        begun = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        views, labels = batch
        batch = ([v.to(device) for v in views], labels.to(device))
        probe.batch_loss(batch)[0].backward()
        probe.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - begun)
    del probe
    return 1.0 / max(float(np.median(timings[WARMUP_STEPS:])), 1e-3)


def _trainer(
    config: TrainConfig, figures: EpochFigures, model: Any, steps: int, epochs: int, has_val: bool
) -> pl.Trainer:
    logs = config.home / "logs" / "train"
    return pl.Trainer(
        max_steps=steps,
        max_epochs=None,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        check_val_every_n_epoch=max(1, epochs // VALIDATIONS_PER_RUN),
        logger=[CSVLogger(logs, name=config.run_name), TensorBoardLogger(logs, name=config.run_name)],
        callbacks=[
            figures,
            ModelCheckpoint(
                dirpath=config.home / "checkpoints" / config.run_name, save_last=True, save_top_k=0
            ),
            *([StepProgress(f"training {config.method}")] if config.progress else []),
        ],
        enable_progress_bar=False,
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
    length: RunLength,
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
        mean=list(model.mean),
        std=list(model.std),
        orientation_pooling=DEFAULT_ORIENTATION_POOLING,
        data={
            "dataset": config.dataset,
            "layout": config.layout,
            "root": str(Path(config.data).absolute()),
            "tiles": len(tiles),
            "groups": len(set(tiles.groups)),
            "labels": per_label,
            "failed_images": failed,
            "tile_size": config.tiling.tile_size,
        },
        training={
            "epochs": len(figures.epochs),
            "steps": steps,
            "planned_steps": length.steps,
            "run_length": length.reason,
            "steps_per_second": round(steps / seconds, 3) if seconds > 0 else None,
            "init": config.init,
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
