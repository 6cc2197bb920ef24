"""``histocli train METHOD``: train one SSL method on a data set's tiles and save the encoder."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import (
    MIN_TISSUE,
    STRIDE,
    TARGET_MPP,
    TILE_SIZE,
    console,
    domain_errors,
    settings_of,
    tiling_config,
)


@domain_errors
def train(
    ctx: typer.Context,
    method: str = typer.Argument(..., help="simclr, nnclr, barlow_twins or swav (see `histocli encoders`)."),
    data: Path = typer.Option(..., "--data", help="The data set folder, as downloaded."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="bracs, bach, crc or folder."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs of the data (a step count)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimiser steps."),
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    init: str = typer.Option(
        "imagenet",
        "--init",
        help="imagenet: continue from ImageNet weights with the fine-tuning recipe; random: from scratch.",
    ),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="efficientnet_lite0 (default with --init imagenet: its weights ship), resnet18 "
        "(default with --init random) or resnet50.",
    ),
    backbone_weights: Path | None = typer.Option(
        None, "--backbone-weights", help="Start from this state dict (e.g. a torchvision ResNet's)."
    ),
    input_size: int = typer.Option(
        224, "--input-size", min=32, help="Pixels the encoder sees (tiles are resized)."
    ),
    devices: str = typer.Option(
        "auto", "--devices", help="auto: all GPUs with DDP, else CPU; or cpu, or a count."
    ),
    precision: str = typer.Option(
        "auto", "--precision", help="auto: bf16-mixed where the GPU has it, else 32-true."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of this run."),
    minutes: float | None = typer.Option(
        None,
        "--minutes",
        help="Train for this many minutes (the schedule spans them); caps --epochs/--steps.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Artifact folder (default HISTO_HOME/encoders/METHOD)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader worker processes."),
    seed: int = typer.Option(0, "--seed"),
    tile_size: int | None = TILE_SIZE,
    stride: int | None = STRIDE,
    target_mpp: float | None = TARGET_MPP,
    min_tissue: float | None = MIN_TISSUE,
) -> None:
    """Train a self-supervised encoder; logs, checkpoints and the artifact go under HISTO_HOME."""
    from histo.encoders.artifact import load_meta
    from histo.training import TrainConfig
    from histo.training import train as run_training

    settings = settings_of(ctx)
    config = TrainConfig(
        method=method,
        data=data,
        dataset=dataset,
        home=settings.home,
        out=out,
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        init=init,
        backbone=backbone,
        backbone_weights=backbone_weights,
        input_size=input_size,
        devices=devices,
        precision=precision,
        resume=resume,
        max_minutes=minutes,
        num_workers=workers,
        seed=seed,
        tiling=tiling_config(settings, tile_size, stride, target_mpp, min_tissue),
        max_pixels=settings.images.max_pixels,
    )
    artifact = run_training(config)
    record = load_meta(artifact).training
    console.print(
        f"trained {method} ({record['init']} init): {record['steps']} steps "
        f"({record['steps_per_second']} steps/s, {record['run_length']}) in {record['seconds']:.0f} s, "
        f"final loss {_shown(record['final_loss'])}, kNN acc {_shown(record['val_knn_acc'])} -> {artifact}"
    )


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
