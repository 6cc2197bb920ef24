"""Do histo's SSL encoders retrieve better than generic ImageNet features? Method x init x seed.

For each seed, synthetic BACH-like and BRACS-like sets are written (the demo's sizes, data seed =
seed), every SSL method is trained on the BACH-like tiles from each init for the same number of
optimiser steps (a fixed budget, so the figures do not depend on how busy the machine was), and
every encoder — with the ``random``, ``colorhist`` and ``imagenet`` baselines of the same run — is
scored on:

- leave-one-out retrieval on both synthetic sets, own image and slide excluded (the protocol of
  ``histocli evaluate``): mMV@5 and mAP@5;
- the real-H&E near-duplicate task (:mod:`benchmarks.near_duplicates`): top-1 per change.

``python -m benchmarks.ssl_quality [--seeds 0,1,2] [--steps 60] [--quick]`` writes
``benchmarks/results/ssl_quality.json`` (every run, and mean ± sd over seeds) and
``ssl_quality.md`` (the README's table) and prints it: each retrieval cell is the mean ± sd over seeds
and, in brackets, the 95 % interval of one run (bootstrap over slides, bounds averaged over the seeds), so
the spread from seed to seed and the spread from the few slides of one set are read side by side.
Synthetic figures say nothing about real data.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.common import RESULTS_DIR, machine, write_report
from benchmarks.near_duplicates import CHANGES, SUMMARIES, queries, real_tiles, top1
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tile_cache import TileSet, load_tile_set
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.artifact import load_meta
from histo.encoders.baselines import make_baseline_artifact
from histo.encoders.registry import names
from histo.evaluation import IndexedTiles, evaluate_encoder
from histo.training import TrainConfig, train
from histo.uncertainty import group_weights, interval

DATASETS = ("bach", "bracs")
BASELINES = ("random", "colorhist", "imagenet")
METRICS = ("mMV@5", "mAP@5")
NEAR_DUPLICATE_QUERIES = 60


@dataclass(frozen=True)
class Budget:
    """What every training run of one benchmark gets."""

    steps: int
    input_size: int
    batch_size: int


def synthetic_sets(root: Path, seed: int) -> dict[str, TileSet]:
    """The demo's synthetic sets (BACH-like 10 x 16 tiles, BRACS-like 8 x 14), decoded once."""
    write_synthetic("bach", root / "bach", slides=10, tiles_per_slide=16, seed=seed)
    write_synthetic("bracs", root / "bracs", slides=8, tiles_per_slide=14, seed=seed)
    sets = {}
    for dataset in DATASETS:
        records = scan_dataset(root / dataset, dataset).records
        sets[dataset], _ = load_tile_set(records, TilingConfig(), 250_000_000, root / "cache", progress=False)
    return sets


def retrieval(embedder: Embedder, tiles: TileSet, with_intervals: bool = False) -> dict[str, float]:
    """Leave-one-out metrics of one encoder on one set, own slide excluded (as ``histocli evaluate``);
    with ``with_intervals``, each metric's 95 % slide-bootstrap bounds too (``METRIC low/high``)."""
    vectors = embedder.embed(np.asarray(tiles.pixels))
    payloads = [
        {"label": lab, "image_id": g, "slide_id": g}
        for lab, g in zip(tiles.labels, tiles.groups, strict=True)
    ]
    indexed = IndexedTiles([str(i) for i in range(len(payloads))], vectors, payloads)
    result = evaluate_encoder(indexed, [1, 5])
    out = {metric: round(float(result.summary["overall"][metric]), 4) for metric in METRICS}
    if with_intervals and result.plan is not None:
        weights = group_weights(result.plan.units)
        for metric in METRICS:
            found = interval(result.values[metric], result.plan.labels, weights)
            out[f"{metric} low"], out[f"{metric} high"] = round(found.low, 4), round(found.high, 4)
    return out


def score(folder: Path, sets: dict[str, TileSet], real: np.ndarray, near: Any) -> dict[str, Any]:
    """Every figure of one encoder artifact."""
    embedder = Embedder.from_artifact(folder)
    row: dict[str, Any] = {dataset: retrieval(embedder, tiles, True) for dataset, tiles in sets.items()}
    row["near_duplicates"] = top1(embedder, real, *near)
    training = load_meta(folder).training
    if training:
        row["training"] = {k: training.get(k) for k in ("steps", "seconds", "steps_per_second", "final_loss")}
    return row


def one_seed(seed: int, budget: Budget, methods: list[str], inits: list[str], work: Path) -> dict:
    """Every encoder of one seed: baselines, then each method from each init."""
    sets = synthetic_sets(work / "data", seed)
    real = real_tiles()
    near = queries(real, NEAR_DUPLICATE_QUERIES, seed)
    rows: dict[str, Any] = {}
    for name in BASELINES:
        folder = make_baseline_artifact(name, work / "encoders" / name, input_size=budget.input_size)
        rows[name] = score(folder, sets, real, near)
    runs = [(method, init) for init in inits for method in methods]
    for method, init in tqdm(runs, desc=f"seed {seed}", unit="run"):
        config = TrainConfig(
            method=method,
            data=work / "data" / "bach",
            layout="bach",
            home=work,
            out=work / "encoders" / f"{method}-{init}",
            steps=budget.steps,
            batch_size=budget.batch_size,
            init=init,
            input_size=budget.input_size,
            seed=seed,
            progress=False,
        )
        rows[f"{method} ({init})"] = score(train(config), sets, real, near)
    return rows


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Mean ± sd over seeds of every figure, per encoder."""
    encoders = list(next(iter(per_seed.values())))
    table: dict[str, dict[str, str]] = {}
    for encoder in encoders:
        cells: dict[str, str] = {}
        for dataset in DATASETS:
            for metric in METRICS:
                runs = [s[encoder][dataset] for s in per_seed.values()]
                cells[f"{dataset} {metric}"] = _mean_sd([r[metric] for r in runs]) + _bounds(runs, metric)
        for part in (*SUMMARIES, "all"):
            values = [s[encoder]["near_duplicates"][part] for s in per_seed.values()]
            cells[f"near-dup {part}"] = _mean_sd(values)
        table[encoder] = cells
    return table


def _bounds(runs: list[dict[str, float]], metric: str) -> str:
    """`` [low, high]``: the 95 % slide-bootstrap interval, its bounds averaged over the seeds."""
    if not all(f"{metric} low" in r for r in runs):
        return ""
    low = statistics.fmean(r[f"{metric} low"] for r in runs)
    high = statistics.fmean(r[f"{metric} high"] for r in runs)
    return f" [{low:.3f}, {high:.3f}]"


def _mean_sd(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def markdown(table: dict[str, dict[str, str]]) -> str:
    columns = list(next(iter(table.values())))
    lines = ["| encoder | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells[c] for c in columns) + " |" for name, cells in table.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=60, help="Optimiser steps per training run.")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", default=",".join(names(kind="ssl")))
    parser.add_argument("--inits", default="imagenet,random")
    parser.add_argument("--quick", action="store_true", help="One seed, 2 steps, SimCLR only: a smoke run.")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    if args.quick:
        seeds, methods, args.steps = seeds[:1], ["simclr"], 2
    budget = Budget(args.steps, args.input_size, args.batch_size)
    started = time.time()
    per_seed = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            per_seed[seed] = one_seed(seed, budget, methods, args.inits.split(","), Path(tmp))
    table = summarise(per_seed)
    report = {
        "command": "python -m benchmarks.ssl_quality "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (("seeds", args.seeds), ("steps", args.steps)))
        + (" --quick" if args.quick else ""),
        "budget": vars(budget) if hasattr(budget, "__dict__") else budget.__dict__,
        "changes": list(CHANGES),
        "note": "synthetic data for the retrieval columns; real H&E for near-duplicates; CPU training",
        "machine": machine(),
        "seconds": round(time.time() - started, 1),
        "mean_sd": table,
        "per_seed": {str(seed): rows for seed, rows in per_seed.items()},
    }
    write_report(args.out, "ssl_quality", report)
    (args.out / "ssl_quality.md").write_text(markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
