"""Do the SSL methods train stably at the small batches a CPU allows? (solo-learn assumes 256.)

For each registered method, train a ResNet-18 for ``--steps`` steps at batch ``--batch`` and input
96 px on synthetic H&E tiles (``write_synthetic("bach", slides=6, tiles_per_slide=16)``, read back
with the real adapter and tiler), once with solo-learn's published defaults
(``SOLO_LEARN_DEFAULTS``, lr scaled by batch / 256 as solo-learn does) and, where they differ,
once with the constructor defaults histo ships (the small-batch defaults); those methods are
also compared with ``--extra-seeds`` (1) and at ``--check-batch`` 64 for ``--check-steps`` 40
steps. The schedule is compressed to the run: ``max_epochs`` = the epochs the steps cover,
warm-up 10 % of them (as 10 of 100 epochs).

Recorded per run: loss at the start (mean of the first 3 steps) and end (mean of the last 5), its
extremes, non-finite steps, ``diverged`` (a non-finite loss, or an end loss above the start
loss), ``spikes`` (steps above twice the median loss), peak and end loss over the start loss,
the spread of the L2-normalised backbone
features (collapse -> 0), seconds per step, and the cross-slide 5-NN accuracy of the backbone
features (labels = class, neighbours from other slides only,
``histo.data.synth.cross_group_knn``) before and after. Also timed: one training step
at ``--time-size`` (224) px and batch ``--batch`` per method, outside Lightning (median of 2).

Writes ``benchmarks/results/small_batch_stability.json``. Numbers are synthetic and short-run:
they show stability, not final quality. Other processes on the machine inflate the timings;
the load average is recorded beside them.

    .venv/bin/python -m benchmarks.small_batch_stability [--steps 60] [--batch 32] [--methods simclr,swav]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from histo.data.datasets import scan_dataset
from histo.data.synth import cross_group_knn, write_synthetic
from histo.data.tiling import TilingConfig, iter_tiles
from histo.encoders.methods.base import LARS, parameter_groups
from histo.encoders.registry import create_encoder, get_spec, names
from histo.encoders.transforms import eval_transform

RESULTS = Path(__file__).parent / "results" / "small_batch_stability.json"
INPUT_SIZE = 96
SCHEDULE_KEYS = ("source", "batch_size", "max_epochs", "warmup_epochs", "augmentations", "crop_sizes")


class Views(Dataset):
    """(views, label) per tile through the method's training transform."""

    def __init__(self, tiles: list[np.ndarray], labels: list[int], transform: Any) -> None:
        self.tiles, self.labels, self.transform = tiles, labels, transform

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> tuple[list[Tensor], int]:
        return self.transform(self.tiles[i]), self.labels[i]


class StepLog(pl.Callback):
    """Loss and wall time of every training step."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def synthetic_tiles(
    workdir: Path, slides: int, tiles_per_slide: int
) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Tiles, integer class labels and slide groups of a synthetic BACH set, as ingestion tiles it."""
    summary = write_synthetic(
        "bach", workdir / "bach", slides=slides, tiles_per_slide=tiles_per_slide, seed=0
    )
    scan = scan_dataset(summary.root, "bach")
    classes = sorted({str(r.label) for r in scan.records})
    tiles, labels, groups = [], [], []
    for record in scan.records:
        for tile in iter_tiles(record, TilingConfig()):
            tiles.append(tile.pixels)
            labels.append(classes.index(str(record.label)))
            groups.append(record.group_id)
    return tiles, labels, groups


@torch.no_grad()
def backbone_features(model: Any, tiles: list[np.ndarray]) -> np.ndarray:
    """L2-normalised backbone features of every tile (eval mode, evaluation transform)."""
    model.eval()
    transform = eval_transform(INPUT_SIZE)
    batches = [torch.stack([transform(t) for t in tiles[i : i + 64]]) for i in range(0, len(tiles), 64)]
    features = torch.cat([model(b) for b in batches])
    return torch.nn.functional.normalize(features, dim=1).numpy()


def spread(features: np.ndarray) -> float:
    """Mean per-dimension standard deviation of unit feature vectors (0 = collapsed)."""
    return float(features.std(axis=0).mean())


def solo_overrides(name: str) -> dict[str, Any]:
    """Constructor arguments that reproduce solo-learn's published defaults for ``name``."""
    defaults: dict[str, Any] = getattr(get_spec(name).factory, "SOLO_LEARN_DEFAULTS", {})
    return {k: v for k, v in defaults.items() if k not in SCHEDULE_KEYS}


def shipped_differences(name: str) -> dict[str, Any]:
    """Where histo's constructor defaults differ from solo-learn's: {key: [solo, histo]}."""
    import inspect

    cls = get_spec(name).factory
    params = inspect.signature(cls.__init__).parameters
    solo = solo_overrides(name)
    return {k: [v, params[k].default] for k, v in solo.items() if k in params and params[k].default != v}


def run(
    name: str,
    overrides: dict[str, Any],
    data: tuple[list[np.ndarray], list[int], list[str]],
    steps: int,
    batch: int,
    before: dict[str, float],
    seed: int = 0,
) -> dict[str, Any]:
    """Train one configuration and measure it (``seed``: model initialisation, data order, views)."""
    tiles, labels, groups = data
    steps_per_epoch = len(tiles) // batch
    epochs = max(2, math.ceil(steps / steps_per_epoch))
    torch.manual_seed(seed)
    model = create_encoder(
        name,
        input_size=INPUT_SIZE,
        batch_size=batch,
        max_epochs=epochs,
        warmup_epochs=epochs / 10,
        **overrides,
    )
    loader = DataLoader(
        Views(tiles, labels, model.train_transform()),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=1,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(seed),
    )
    log = StepLog()
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[log],
    )
    started = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - started
    losses = np.array(log.losses)
    finite = np.isfinite(losses)
    start = float(np.mean(losses[:3]))
    end = float(np.mean(losses[-5:]))
    features = backbone_features(model, tiles) if finite.all() else None
    after = cross_group_knn(features, [str(x) for x in labels], groups) if features is not None else None
    return {
        "overrides": {k: v for k, v in overrides.items() if not isinstance(v, tuple)},
        "lr_effective": model.scaled_lr,
        "steps": len(losses),
        "epochs": epochs,
        "loss_start": round(start, 4),
        "loss_end": round(end, 4),
        "loss_min": round(float(np.nanmin(losses)), 4),
        "loss_max": round(float(np.nanmax(losses)), 4),
        "peak_over_start": round(float(np.nanmax(losses)) / start, 3),
        "end_over_start": round(end / start, 3),
        "nonfinite_steps": int((~finite).sum()),
        "diverged": bool(not finite.all() or end > start),
        "spikes": int((losses[finite] > 2 * np.median(losses[finite])).sum()) if finite.any() else None,
        "feature_spread_before": before["spread"],
        "feature_spread_after": round(spread(features), 4) if features is not None else None,
        "knn_before": before["knn"],
        "knn_after": round(after, 4) if after is not None else None,
        "seconds_per_step": round(float(np.median(log.seconds)), 3),
        "seconds": round(seconds, 1),
        "loss_curve": [round(x, 4) for x in losses.tolist()],
    }


def step_seconds(name: str, input_size: int, batch: int, tile: np.ndarray, repeats: int = 2) -> float:
    """Median seconds of one optimiser step (forward, backward, LARS) after one warm-up step."""
    torch.manual_seed(0)
    model = create_encoder(name, input_size=input_size, batch_size=batch)
    model.train()
    transform = model.train_transform()
    views = [torch.stack(v) for v in zip(*[transform(tile) for _ in range(batch)], strict=True)]
    labels = torch.zeros(batch, dtype=torch.long)
    optimizer = LARS(parameter_groups(model, 1e-4), lr=1e-3)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        loss, _ = model.ssl_step(views, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return round(float(np.median(times[1:])), 3)


def plans_labels(plans: list[tuple[str, dict[str, Any], int, int, int]], config: str) -> list[str]:
    """Labels of the runs of one configuration (``solo_learn`` or ``shipped``)."""
    return [label for label, *_ in plans if label == config or label.startswith(config + "_")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--check-batch",
        type=int,
        default=64,
        help="for methods whose shipped defaults differ from solo-learn's, also compare both here (0: skip)",
    )
    parser.add_argument(
        "--extra-seeds",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[1],
        help="more seeds for both configurations of methods whose defaults differ (comma list, '' for none)",
    )
    parser.add_argument("--check-steps", type=int, default=40, help="steps of the --check-batch runs")
    parser.add_argument(
        "--time-size",
        type=int,
        default=224,
        help="also time single steps at this input size, batch --batch (0: skip)",
    )
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--tiles-per-slide", type=int, default=16)
    parser.add_argument("--methods", default=",".join(names(kind="ssl")))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--always-both",
        action="store_true",
        help="also run the shipped defaults where they equal solo-learn's",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LightningModule.*has parameters that were not used.*")
    pl.seed_everything(0, verbose=False)
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_tiles(Path(tmp), args.slides, args.tiles_per_slide)
    tiles, labels, groups = data
    results: dict[str, Any] = {}
    for name in args.methods.split(","):
        torch.manual_seed(0)
        initial = create_encoder(name, input_size=INPUT_SIZE)
        features = backbone_features(initial, tiles)
        before = {
            "spread": round(spread(features), 4),
            "knn": round(cross_group_knn(features, [str(x) for x in labels], groups), 4),
        }
        entry: dict[str, Any] = {"changed_defaults": shipped_differences(name)}
        compare = bool(entry["changed_defaults"]) or args.always_both
        plans: list[tuple[str, dict[str, Any], int, int, int]] = [
            ("solo_learn", solo_overrides(name), args.batch, args.steps, 0)
        ]
        if compare:
            plans.append(("shipped", {}, args.batch, args.steps, 0))
            for seed in args.extra_seeds:
                plans.append((f"solo_learn_seed_{seed}", solo_overrides(name), args.batch, args.steps, seed))
                plans.append((f"shipped_seed_{seed}", {}, args.batch, args.steps, seed))
            if args.check_batch:
                b = args.check_batch
                plans.append((f"solo_learn_batch_{b}", solo_overrides(name), b, args.check_steps, 0))
                plans.append((f"shipped_batch_{b}", {}, b, args.check_steps, 0))
        for label, overrides, batch, steps, seed in plans:
            entry[label] = run(name, overrides, data, steps, batch, before, seed=seed)
            print(f"{name:13s} {label:22s} {_line(entry[label])}", flush=True)
        if compare:
            entry["summary"] = {
                config: {
                    "runs": plans_labels(plans, config),
                    "spikes": [entry[k]["spikes"] for k in plans_labels(plans, config)],
                    "peak_over_start": [entry[k]["peak_over_start"] for k in plans_labels(plans, config)],
                    "end_over_start": [entry[k]["end_over_start"] for k in plans_labels(plans, config)],
                    "knn_after": [entry[k]["knn_after"] for k in plans_labels(plans, config)],
                }
                for config in ("solo_learn", "shipped")
            }
        if args.time_size:
            key = f"seconds_per_step_input_{args.time_size}"
            entry[key] = step_seconds(name, args.time_size, args.batch, tiles[0])
            print(f"{name:13s} {entry[key]} s/step at {args.time_size} px, batch {args.batch}", flush=True)
        results[name] = entry
    report = {
        "command": "python -m benchmarks.small_batch_stability "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "note": "synthetic H&E (histo.data.synth), short runs: stability evidence, not final quality",
        "data": {
            "dataset": "bach (synthetic)",
            "slides": args.slides,
            "tiles_per_slide": args.tiles_per_slide,
            "tiles": len(tiles),
            "classes": len(set(labels)),
            "chance": round(1 / len(set(labels)), 4),
        },
        "setup": {
            "backbone": "resnet18",
            "input_size": INPUT_SIZE,
            "batch_size": args.batch,
            "steps": args.steps,
            "schedule": "warm-up 10 % then cosine over the run (max_epochs = epochs the steps cover)",
            "knn": "cross-slide leave-one-out 5-NN on L2-normalised backbone features (cross_group_knn)",
            "diverged": "a non-finite loss, or mean loss of the last 5 steps above that of the first 3",
            "spikes": "steps whose loss exceeds twice the run's median loss",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_end": os.getloadavg(),
        },
        "seconds_total": round(time.perf_counter() - begun, 1),
        "methods": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['seconds_total']} s")
    return 0


def _line(r: dict[str, Any]) -> str:
    return (
        f"loss {r['loss_start']:.3f} -> {r['loss_end']:.3f}  nonfinite {r['nonfinite_steps']}  "
        f"diverged {r['diverged']}  spikes {r['spikes']}  kNN {r['knn_before']} -> {r['knn_after']}  "
        f"spread {r['feature_spread_before']} -> {r['feature_spread_after']}  {r['seconds_per_step']} s/step"
    )


if __name__ == "__main__":
    raise SystemExit(main())
