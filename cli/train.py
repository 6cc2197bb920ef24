"""``histocli train METHOD``: train one SSL method on a data set's tiles and save the encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli.common import (
    INTERRUPTED_EXIT,
    MIN_TISSUE,
    STRIDE,
    TARGET_MPP,
    TILE_SIZE,
    console,
    domain_errors,
    err_console,
    open_index,
    pick_layout,
    positive,
    settings_of,
    tiling_config,
)
from histo.encoders import DEFAULT_INPUT_SIZE
from histo.errors import InvalidInputError, StoreUnavailableError, unknown_name
from histo.settings import Settings


@domain_errors
def train(
    ctx: typer.Context,
    method: str = typer.Argument(..., help="simclr, nnclr, barlow_twins or swav (see `histocli encoders`)."),
    data: Path = typer.Option(..., "--data", help="The data set folder, as downloaded."),
    layout: str | None = typer.Option(
        None,
        "--layout",
        help="How --data is laid out: bracs, bach, crc, folder (class sub-folders) or slides.",
    ),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="The old spelling of --layout."),
    name: str | None = typer.Option(
        None,
        "--name",
        help="The encoder's name: its artifact HISTO_HOME/encoders/NAME and its vectors in the index "
        "(default: METHOD). A new name trains an encoder beside the others (e.g. simclr_2).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an artifact whose vectors are indexed (they must then be re-ingested).",
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs of the data (a step count)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimiser steps."),
    batch_size: int = typer.Option(64, "--batch-size", min=2, help="Tiles per optimiser step (at least 2)."),
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
        DEFAULT_INPUT_SIZE,
        "--input-size",
        min=32,
        help="Pixels the encoder sees, at least 32 (tiles are resized; 96 by measurement, see README).",
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
        callback=positive,
        help="Train for this many minutes (above 0; the schedule spans them); caps --epochs/--steps.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Artifact folder elsewhere than HISTO_HOME/encoders/NAME (its name is NAME)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="DataLoader worker processes (default: none on 2 cores or fewer)."
    ),
    seed: int = typer.Option(0, "--seed", min=0),
    tile_size: int | None = TILE_SIZE,
    stride: int | None = STRIDE,
    target_mpp: float | None = TARGET_MPP,
    min_tissue: float | None = MIN_TISSUE,
) -> None:
    """Train a self-supervised encoder on a data set's tiles; logs, checkpoints and the artifact go
    under HISTO_HOME.

    The run is written beside the artifact and swapped in at the end, so an interrupted run leaves
    the old artifact whole. An artifact whose vectors are in the index is not replaced without
    --force: train under a new --name instead.
    """
    from histo.training import TrainConfig
    from histo.training import train as run_training

    settings = settings_of(ctx)
    chosen_layout = pick_layout(layout, dataset)
    check_method(method)
    target = artifact_folder(settings.encoders_dir, method, name, out)
    replaced = check_replace(settings, target, method, force)
    before = previous_input_size(target)
    config = TrainConfig(
        method=method,
        data=data,
        layout=chosen_layout,
        home=settings.home,
        out=target,
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
    try:
        artifact = run_training(config)
    except KeyboardInterrupt:
        checkpoint = (settings.home / "checkpoints" / target.name / "last.ckpt").exists()
        err_console.print(
            f"interrupted; {target} was left as it was; rerun the same command to train again"
            + (", with --resume to continue from its last checkpoint" if checkpoint else ""),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(INTERRUPTED_EXIT) from None
    say_trained(artifact, config, replaced)
    if before is not None and before != config.input_size:
        console.print(
            f"note: {target.name} now sees {config.input_size} px, the artifact it replaced saw {before} px "
            f"(give --input-size {before} to keep it)",
            highlight=False,
            soft_wrap=True,
        )


def previous_input_size(target: Path) -> int | None:
    """The input size of the artifact a run will replace, if there is one."""
    from histo.encoders.artifact import META_FILE, load_meta

    return load_meta(target).input_size if (target / META_FILE).is_file() else None


def check_method(method: str) -> None:
    """An SSL method the registry knows; an unknown name lists the trainable ones only."""
    from histo.encoders.registry import get_spec, names

    trainable = names(kind="ssl")
    if method not in trainable:
        if method in names():
            raise InvalidInputError(
                f"{method!r} is a baseline: it needs no training (ingest with -e {method}); "
                f"trainable: {', '.join(trainable)}"
            )
        raise unknown_name("method", method, trainable)
    get_spec(method)


def artifact_folder(encoders_dir: Path, method: str, name: str | None, out: Path | None) -> Path:
    """Where the artifact goes: --out, else HISTO_HOME/encoders/NAME (NAME: --name or the method)."""
    from histo.data.datasets import check_dataset_name
    from histo.encoders.registry import names

    if out is not None and name is not None:
        raise InvalidInputError("give --name (an artifact under HISTO_HOME/encoders) or --out, not both")
    chosen = check_dataset_name(name) if name is not None else method
    if chosen != method and chosen in names():
        raise InvalidInputError(
            f"--name {chosen} is a registered encoder's name; choose another, e.g. {method}_2"
        )
    return out if out is not None else encoders_dir / chosen


def check_replace(settings: Settings, target: Path, method: str, force: bool) -> int:
    """The vectors of ``target``'s name in the index (0 when there is no artifact to replace);
    an error when there are some and not ``--force``, or when the index cannot tell."""
    from histo.encoders.artifact import META_FILE
    from histo.provenance import indexed_vectors

    if not (target / META_FILE).is_file():
        return 0
    name = target.name
    instead = f"train a new encoder beside it: --name {free_name(target)}, or"
    try:
        with open_index(settings) as store:
            count = indexed_vectors(store, name)
    except StoreUnavailableError as exc:
        if force:
            return 0
        raise InvalidInputError(
            f"cannot tell whether the index holds vectors of {name} ({exc}); {instead} replace it "
            "anyway with --force"
        ) from None
    if count and not force:
        raise InvalidInputError(
            f"{target} made the {count} {name} vectors in the index; retraining it would leave them from "
            f"another model (searches with {name} refused until re-ingested). Either {instead} replace it "
            f"with --force and re-embed them afterwards (histocli ingest ... -e {name})"
        )
    return count


def free_name(target: Path) -> str:
    """``NAME_2``, ``NAME_3``, ...: the first such artifact name not taken beside ``target``."""
    stem = target.name
    number = 2
    while (target.parent / f"{stem}_{number}").exists():
        number += 1
    return f"{stem}_{number}"


#: Why a run took the steps it took (``histo.training.RunLength.reason``), for the summary.
LENGTH_REASONS = {
    "steps": "--steps as given",
    "epochs": "--epochs of the data",
    "default": "the default: 100 epochs of the data, at least 300 steps",
    "minutes": "as many as fit in --minutes at the measured speed",
}


def say_trained(artifact: Path, config: Any, replaced: int) -> None:
    """What was trained, how long and why that long, and the command that puts it to use."""
    from histo.encoders.artifact import artifact_digest, load_meta

    record = load_meta(artifact).training
    reason = LENGTH_REASONS.get(str(record["run_length"]), str(record["run_length"]))
    console.print(
        f"trained {config.method} ({record['init']} init) as {artifact.name}: {record['steps']} optimiser "
        f"steps ({reason}; {record['steps_per_second']} steps/s) in {record['seconds']:.0f} s, final loss "
        f"{_shown(record['final_loss'])}, kNN accuracy on held-out tiles {_shown(record['val_knn_acc'])}; "
        f"artifact {artifact} (digest {artifact_digest(artifact)})",
        highlight=False,
        soft_wrap=True,
    )
    if replaced:
        console.print(
            f"the {replaced} {artifact.name} vectors in the index came from the artifact it replaced: "
            f"searches with {artifact.name} are refused until they are re-embedded",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"next: histocli ingest {config.data} --layout {config.layout} --name {config.dataset} "
        f"-e {artifact.name}",
        highlight=False,
        soft_wrap=True,
    )


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
