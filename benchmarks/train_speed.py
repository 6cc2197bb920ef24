"""Optimiser steps per second of SSL training on this machine, and what each speed choice buys.

The demo's time budget is spent on optimiser steps, so each choice is measured as steps/s with the
same probe ``histocli train --minutes`` plans with (:func:`histo.training.measure_steps_per_second`:
real batches decoded from the tile cache, augmented, forward and backward), against the default in
the same run:

- the default: EfficientNet-Lite0 from ImageNet, 3/4 of its stages frozen, channels-last, 96 px,
  batch 32, decoding in the main process (0 loader workers on <= 2 cores);
- the whole backbone trained (``freeze_stages=0``);
- one loader worker process;
- 128 px input;
- contiguous (NCHW) instead of channels-last memory, on the bare backbone's forward + backward;
- every method at the default.

``python -m benchmarks.train_speed`` writes ``benchmarks/results/train_speed.json``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import RESULTS_DIR, machine, ratio, write_report
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tile_cache import TileSet, load_tile_set
from histo.data.tiling import TilingConfig
from histo.encoders.backbones import create_backbone
from histo.encoders.registry import create_encoder, names
from histo.encoders.tile_datasets import ViewTiles, label_indices
from histo.training import TrainConfig, measure_steps_per_second

BATCH = 32


def _tiles(root: Path) -> TileSet:
    write_synthetic("bach", root / "bach", slides=6, tiles_per_slide=16, seed=0)
    records = scan_dataset(root / "bach", "bach").records
    tiles, _ = load_tile_set(records, TilingConfig(), 250_000_000, root / "cache", progress=False)
    return tiles


def steps_per_second(tiles: TileSet, method: str = "simclr", workers: int = 0, **options: Any) -> float:
    """The training probe's rate for one configuration (median of 5 repeats of its timed steps)."""
    model = create_encoder(
        method, init="imagenet", backbone="efficientnet_lite0", batch_size=BATCH, **options
    )
    views = ViewTiles(tiles.pixels, np.arange(len(tiles)), label_indices(tiles), model.train_transform())
    loader = DataLoader(views, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers)
    config = TrainConfig(method=method, data=Path("."), layout="bach", home=Path("."), devices="cpu")
    return statistics.median(measure_steps_per_second(model, loader, config) for _ in range(5))


def memory_format_ms(channels_last: bool, size: int = 96) -> float:
    """Median ms of one forward + backward of the bare backbone on 2 x BATCH images."""
    network, _ = create_backbone("efficientnet_lite0", init="imagenet")
    images = torch.randn(2 * BATCH, 3, size, size)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(6):
        started = time.perf_counter()
        network(images).square().mean().backward()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tiles = _tiles(Path(tmp))
        default = steps_per_second(tiles, input_size=96)
        variants = {
            "whole backbone trained": steps_per_second(tiles, input_size=96, freeze_stages=0.0),
            "one loader worker": steps_per_second(tiles, workers=1, input_size=96),
            "128 px input": steps_per_second(tiles, input_size=128),
        }
        methods = {name: steps_per_second(tiles, method=name, input_size=96) for name in names(kind="ssl")}
    nchw, nhwc = memory_format_ms(False), memory_format_ms(True)
    report = {
        "command": "python -m benchmarks.train_speed",
        "default": "simclr, EfficientNet-Lite0 from ImageNet, 3/4 of stages frozen, channels-last, 96 px, "
        f"batch {BATCH}, 0 loader workers",
        "steps_per_second": {"default": round(default, 3), **{k: round(v, 3) for k, v in variants.items()}},
        "ratio_to_default": {k: ratio(v, default) for k, v in variants.items()},
        "per_method_steps_per_second": {k: round(v, 3) for k, v in methods.items()},
        "backbone_forward_backward_ms": {"contiguous": round(nchw, 1), "channels_last": round(nhwc, 1)},
        "channels_last_speedup": ratio(nchw, nhwc),
        "machine": machine(),
    }
    write_report(RESULTS_DIR, "train_speed", report)
    for key in ("steps_per_second", "ratio_to_default", "per_method_steps_per_second"):
        print(key, report[key])
    print("channels-last speed-up", report["channels_last_speedup"])


if __name__ == "__main__":
    main()
