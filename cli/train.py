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
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    backbone: str = typer.Option("resnet18", "--backbone", help="resnet18 or resnet50."),
    backbone_weights: Path | None = typer.Option(
        None, "--backbone-weights", help="Initialise from this state dict."
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
    minutes: float | None = typer.Option(None, "--minutes", help="Stop after this many minutes."),
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
        batch_size=batch_size,
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
        f"trained {method}: {record['epochs']} epochs, {record['steps']} steps in {record['seconds']:.0f} s, "
        f"final loss {record['final_loss']}, kNN acc {record['val_knn_acc']} -> {artifact}"
    )
