"""Which normalisation and which input size should the ImageNet start (EfficientNet-Lite0) get?

EfficientNet-Lite0's weights were converted from TensorFlow, where its input is ``(x - 127) / 128``
(``EFFICIENTNET_MEAN/STD``, histo's default); the ImageNet mean/std (``IMAGENET_MEAN/STD``) is the
other common choice. Input sizes: 96, 128, 160 and 224 px. Measured, per seed (0, 1, 2 by default;
the seed sets the synthetic data, the real-tissue query sample and the training):

- the ``imagenet`` baseline at every size x both normalisations (the artifact is written, then its
  mean/std are rewritten in its metadata: the weights are the same, only the input differs);
- SimCLR continued from it for a fixed number of steps at batch 32, trained *and* embedded with each
  normalisation (the backbone spec's mean/std are swapped for the run, then restored), at the sizes
  of ``--simclr-sizes`` (96 and 224 px by default);

each scored on leave-one-out retrieval of the synthetic BACH-like and BRACS-like sets (mMV@5, mAP@5,
own image and slide excluded: :func:`benchmarks.ssl_quality.retrieval`) and on the real-tissue task
(:mod:`benchmarks.real_tissue`, overall top-1). Reported: every run, mean ± sd over seeds, seed 0's
95 % cluster-bootstrap interval of each cell (clusters: synthetic slides, real source regions), and
seed 0's paired bootstrap difference for the two contrasts that decide (normalisation at each size;
each size against 96 px).

``python -m benchmarks.input_conditions [--seeds 0,1,2] [--steps 40] [--simclr-sizes 96,224] [--quick]``
writes ``benchmarks/results/input_conditions.json`` and ``input_conditions.md``. Synthetic figures say
little about real data; the real-tissue column is the one on real H&E.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np

from benchmarks import real_tissue
from benchmarks.common import RESULTS_DIR, machine, write_report
from benchmarks.ssl_quality import DATASETS, METRICS, retrieval, synthetic_sets
from histo.data.tile_cache import TileSet
from histo.embedding import Embedder
from histo.encoders import backbones
from histo.encoders.artifact import META_FILE, load_meta
from histo.encoders.backbones import EFFICIENTNET, EFFICIENTNET_MEAN, EFFICIENTNET_STD
from histo.encoders.baselines import make_baseline_artifact
from histo.encoders.transforms import IMAGENET_MEAN, IMAGENET_STD
from histo.evaluation import IndexedTiles, evaluate_encoder
from histo.training import TrainConfig, train
from histo.uncertainty import PerQuery, group_weights, interval, paired

NORMALISATIONS: dict[str, tuple[list[float], list[float]]] = {
    "effnet": (list(EFFICIENTNET_MEAN), list(EFFICIENTNET_STD)),
    "imagenet": (list(IMAGENET_MEAN), list(IMAGENET_STD)),
}
SIZES = (96, 128, 160, 224)
BASELINE = "imagenet"
SSL = "simclr"
REAL = "real top-1"
MEASURES = (*(f"{d} {m}" for d in DATASETS for m in METRICS), REAL)
BATCH_SIZE = 32
ROUNDS = 1000


@dataclasses.dataclass(frozen=True)
class Condition:
    """One cell of the grid: which encoder, at which input size, with which normalisation."""

    encoder: str
    size: int
    norm: str

    @property
    def name(self) -> str:
        return f"{self.encoder} {self.size} px, {self.norm} norm"


@dataclasses.dataclass(frozen=True)
class Data:
    """What one seed scores on: the synthetic sets (written under ``root``) and the real tasks."""

    root: Path
    sets: dict[str, TileSet]
    tasks: list[real_tissue.Task]


# ----------------------------------------------------------------------------- normalisation
@contextmanager
def backbone_normalisation(norm: str) -> Iterator[None]:
    """EfficientNet-Lite0's spec with ``norm``'s mean/std for the duration (what training reads),
    restored after, even on error."""
    original = backbones.SPECS[EFFICIENTNET]
    mean, std = NORMALISATIONS[norm]
    backbones.SPECS[EFFICIENTNET] = dataclasses.replace(original, mean=tuple(mean), std=tuple(std))
    try:
        yield
    finally:
        backbones.SPECS[EFFICIENTNET] = original


def renormalise(folder: Path, norm: str) -> Path:
    """Rewrite an artifact's mean/std in its metadata: same weights, another input normalisation."""
    meta = dataclasses.asdict(load_meta(folder))
    meta["mean"], meta["std"] = NORMALISATIONS[norm]
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def norm_of(folder: Path) -> str:
    """Which normalisation an artifact's metadata holds (a check that the swap took)."""
    meta = load_meta(folder)
    found = [
        n
        for n, (mean, std) in NORMALISATIONS.items()
        if np.allclose(meta.mean, mean) and np.allclose(meta.std, std)
    ]
    return found[0] if found else "other"


# ----------------------------------------------------------------------------- encoders
def make_encoder(condition: Condition, data: Data, steps: int, seed: int, work: Path) -> Path:
    """The artifact of one condition: the baseline renormalised, or SimCLR trained under the norm."""
    out = work / "encoders" / f"{condition.encoder}-{condition.size}-{condition.norm}"
    if condition.encoder == BASELINE:
        folder = renormalise(make_baseline_artifact(BASELINE, out, input_size=condition.size), condition.norm)
    else:
        config = TrainConfig(
            method=SSL,
            data=data.root / "bach",
            layout="bach",
            home=work,
            out=out,
            steps=steps,
            batch_size=BATCH_SIZE,
            init="imagenet",
            input_size=condition.size,
            seed=seed,
            progress=False,
        )
        with backbone_normalisation(condition.norm):
            folder = train(config)
    if norm_of(folder) != condition.norm:
        raise RuntimeError(f"{folder}: its metadata does not hold the {condition.norm} normalisation")
    return folder


# ----------------------------------------------------------------------------- scoring
class _Remembering:
    """An embedder that keeps the last vectors it made, so ``retrieval`` and the intervals share them."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.last = np.zeros((0, 0), dtype=np.float32)

    def embed(self, tiles: np.ndarray) -> np.ndarray:
        self.last = self.embedder.embed(tiles)
        return self.last


def synthetic_values(
    vectors: np.ndarray, tiles: TileSet
) -> tuple[dict[str, PerQuery], np.ndarray, list[str]]:
    """Per-query mMV@5 / mAP@5 of ``retrieval``'s protocol, with each query's class and slide."""
    payloads = [
        {"label": lab, "image_id": g, "slide_id": g}
        for lab, g in zip(tiles.labels, tiles.groups, strict=True)
    ]
    indexed = IndexedTiles([str(i) for i in range(len(payloads))], vectors, payloads)
    result = evaluate_encoder(indexed, [1, 5])
    assert result.plan is not None
    plan = result.plan
    return {m: result.values[m] for m in METRICS}, np.asarray(plan.labels), [str(u) for u in plan.units]


def score(
    folder: Path, data: Data, cache: dict[int, np.ndarray] | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """One artifact's figures (every measure) and its per-query values (for intervals and contrasts);
    ``cache`` keeps its real-tissue index vectors for the next seed (only for unchanged weights)."""
    embedder = Embedder.from_artifact(folder)
    remembering = _Remembering(embedder)
    figures: dict[str, float] = {}
    values: dict[str, Any] = {}
    for dataset, tiles in data.sets.items():
        for metric, value in retrieval(cast(Embedder, remembering), tiles).items():
            figures[f"{dataset} {metric}"] = value
        values[dataset] = synthetic_values(remembering.last, tiles)
    per_task = real_tissue.score_all(embedder, data.tasks, cache)
    values[REAL] = per_task
    real = real_tissue.summary(per_task, rounds=1)
    figures[REAL] = round(real["overall"]["value"], 4)
    # each change too (in the JSON only): which of them moves with the condition
    figures.update({f"real {change}": round(real[change]["value"], 4) for change in real_tissue.CHANGES})
    return figures, values


def intervals(values: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Seed 0's 95 % cluster-bootstrap interval of every measure of one condition."""
    out: dict[str, dict[str, float]] = {}
    for dataset in DATASETS:
        metrics, labels, groups = values[dataset]
        weights = group_weights(groups, ROUNDS, 0)
        for metric in METRICS:
            out[f"{dataset} {metric}"] = interval(metrics[metric], labels, weights).as_dict()
    out[REAL] = real_tissue.summary(values[REAL], ROUNDS, 0)["overall"]
    return out


def contrast(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, object]]:
    """``a`` minus ``b`` on seed 0's same queries and resampled clusters, per measure, with a verdict."""
    out: dict[str, dict[str, object]] = {}
    for dataset in DATASETS:
        metrics_a, labels, groups = a[dataset]
        metrics_b = b[dataset][0]
        weights = group_weights(groups, ROUNDS, 0)
        for metric in METRICS:
            out[f"{dataset} {metric}"] = paired(
                metrics_a[metric], metrics_b[metric], labels, weights
            ).as_dict()
    verdict = real_tissue.compare(a[REAL], b[REAL], ROUNDS, 0)
    out[REAL] = {k: v for k, v in verdict.items() if k != "intervals_disjoint"}
    return out


# ----------------------------------------------------------------------------- the grid
def conditions(simclr_sizes: Sequence[int], baseline_sizes: Sequence[int] = SIZES) -> list[Condition]:
    grid = [Condition(BASELINE, s, n) for s in baseline_sizes for n in NORMALISATIONS]
    return grid + [Condition(SSL, s, n) for s in simclr_sizes for n in NORMALISATIONS]


def load_data(work: Path, seed: int, real_queries: int, made: real_tissue.Material) -> Data:
    """Seed ``seed``'s synthetic sets and real-tissue tasks (the query sample is drawn with it)."""
    root = work / "data"
    return Data(root, synthetic_sets(root, seed), real_tissue.build_tasks(real_queries, seed, made))


@dataclasses.dataclass
class Plan:
    """What every seed runs: the grid, the budget, the real material and the baseline index caches."""

    grid: list[Condition]
    steps: int
    real_queries: int
    made: real_tissue.Material
    caches: dict[str, dict[int, np.ndarray]] = dataclasses.field(default_factory=dict)


def one_seed(seed: int, plan: Plan, log: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every condition of one seed: figures (and training facts), and the per-query values."""
    rows: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = load_data(Path(tmp), seed, plan.real_queries, plan.made)
        for condition in plan.grid:
            started = time.perf_counter()
            folder = make_encoder(condition, data, plan.steps, seed, Path(tmp))
            # the baseline's weights are the same every seed: its real index is embedded once
            cache = plan.caches.setdefault(condition.name, {}) if condition.encoder == BASELINE else None
            figures, values = score(folder, data, cache)
            training = load_meta(folder).training
            if training:
                figures["train_seconds"] = float(training.get("seconds") or 0.0)
                figures["final_loss"] = float(training.get("final_loss") or 0.0)
            figures["seconds"] = round(time.perf_counter() - started, 1)
            rows[condition.name] = figures
            kept[condition.name] = values
            log(f"seed {seed} {condition.name}: {figures}")
    return rows, kept


def mean_sd(
    per_seed: dict[int, dict[str, Any]], measures: Sequence[str] = MEASURES
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and sd over seeds of every measure of every condition."""
    names = list(next(iter(per_seed.values())))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        out[name] = {}
        for measure in measures:
            values = [float(rows[name][measure]) for rows in per_seed.values()]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out[name][measure] = {"mean": round(statistics.fmean(values), 4), "sd": round(sd, 4)}
    return out


def seed_differences(per_seed: dict[int, dict[str, Any]], a: str, b: str) -> dict[str, dict[str, float]]:
    """``a`` minus ``b`` seed by seed (same data and queries within a seed), then mean and sd."""
    out: dict[str, dict[str, float]] = {}
    for measure in MEASURES:
        diffs = [float(rows[a][measure]) - float(rows[b][measure]) for rows in per_seed.values()]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        out[measure] = {"mean": round(statistics.fmean(diffs), 4), "sd": round(sd, 4)}
    return out


def contrasts(
    grid: Sequence[Condition], per_seed: dict[int, dict[str, Any]], values: dict[str, Any]
) -> dict[str, Any]:
    """The decisive comparisons: ImageNet vs EfficientNet normalisation at each size, and each size
    against 96 px under each normalisation — per-seed differences and seed 0's paired verdicts."""
    pairs: list[tuple[Condition, Condition]] = []
    for c in grid:
        if c.norm == "imagenet":
            pairs.append((c, Condition(c.encoder, c.size, "effnet")))
        if c.size != 96 and Condition(c.encoder, 96, c.norm) in grid:
            pairs.append((c, Condition(c.encoder, 96, c.norm)))
    out: dict[str, Any] = {}
    for a, b in pairs:
        key = f"{a.name} - {b.name}"
        out[key] = {"over_seeds": seed_differences(per_seed, a.name, b.name)}
        if values:
            out[key]["seed0_paired"] = contrast(values[a.name], values[b.name])
    return out


# ----------------------------------------------------------------------------- tables
def _cell(stats: dict[str, float], bounds: dict[str, float] | None) -> str:
    text = f"{stats['mean']:.3f} ± {stats['sd']:.3f}"
    return text + (f" [{bounds['low']:.3f}, {bounds['high']:.3f}]" if bounds else "")


def _grid_table(table: dict[str, Any], measures: Sequence[str], bounds: dict[str, Any]) -> list[str]:
    lines = ["| condition | " + " | ".join(measures) + " |", "|---" * (len(measures) + 1) + "|"]
    for name, cells in table.items():
        lines.append(
            f"| {name} | " + " | ".join(_cell(cells[m], bounds.get(name, {}).get(m)) for m in measures) + " |"
        )
    return lines


def _contrast_table(diffs: dict[str, Any]) -> list[str]:
    lines = ["| contrast (a - b) | " + " | ".join(MEASURES) + " |", "|---" * (len(MEASURES) + 1) + "|"]
    for pair, parts in diffs.items():
        cells = []
        for measure in MEASURES:
            over = parts["over_seeds"][measure]
            verdict = parts.get("seed0_paired", {}).get(measure)
            cells.append(
                f"{over['mean']:+.3f} ± {over['sd']:.3f}" + (f" ({verdict['verdict']})" if verdict else "")
            )
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """Three tables: the grid (mean ± sd over seeds [seed 0's 95 % interval]); the contrasts (mean ±
    sd of the per-seed differences, seed 0's paired verdict); real top-1 per change (mean ± sd)."""
    per_change = report["real_per_change_mean_sd"]
    changes = list(next(iter(per_change.values())))
    seeds = ", ".join(report["per_seed"])
    return (
        "\n".join(
            [
                f"Seeds {seeds}; cells: mean ± sd over seeds [seed 0's 95 % cluster-bootstrap interval, "
                "around seed 0's own figure (`per_seed` in the JSON), so it need not hold the mean]. "
                f"`{report['command']}`",
                "",
                *_grid_table(report["mean_sd"], MEASURES, report["seed0_interval"]),
                "",
                "Contrasts: mean ± sd of the per-seed difference (same data and queries within a seed); "
                "in brackets seed 0's paired cluster-bootstrap verdict.",
                "",
                *_contrast_table(report["contrasts"]),
                "",
                "Real-tissue top-1 per change (mean ± sd over seeds).",
                "",
                *_grid_table(per_change, changes, {}),
            ]
        )
        + "\n"
    )


def report(args: argparse.Namespace, plan: Plan, per_seed: dict[int, Any], values: dict[str, Any]) -> dict:
    """Everything measured so far: per seed, mean ± sd, seed 0's intervals and the contrasts."""
    table = mean_sd(per_seed)
    return {
        "command": "python -m benchmarks.input_conditions "
        + f"--seeds {args.seeds} --steps {plan.steps} --simclr-sizes {args.simclr_sizes} "
        + f"--baseline-sizes {args.baseline_sizes} --real-queries {plan.real_queries}"
        + (" --quick" if args.quick else ""),
        "complete": len(per_seed) == len(args.seed_list),
        "normalisations": {k: {"mean": m, "std": s} for k, (m, s) in NORMALISATIONS.items()},
        "budget": {
            "steps": plan.steps,
            "batch_size": BATCH_SIZE,
            "real_queries_per_change": plan.real_queries,
        },
        "note": "synthetic data for the BACH/BRACS columns; real H&E for real top-1; CPU training",
        "machine": machine(),
        "mean_sd": table,
        "real_per_change_mean_sd": mean_sd(per_seed, [f"real {c}" for c in real_tissue.CHANGES]),
        "seed0_interval": {name: intervals(v) for name, v in values.items()},
        "contrasts": contrasts(plan.grid, per_seed, values),
        "per_seed": {str(seed): rows for seed, rows in per_seed.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=30, help="SimCLR optimiser steps per run (batch 32).")
    parser.add_argument("--simclr-sizes", default="96,224", help="Input sizes SimCLR is trained at.")
    parser.add_argument("--baseline-sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--real-queries", type=int, default=40, help="Real-tissue queries per change.")
    parser.add_argument("--quick", action="store_true", help="One seed, 2 steps, 96/128 px, 12 queries.")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    simclr_sizes = [int(s) for s in args.simclr_sizes.split(",")]
    baseline_sizes = [int(s) for s in args.baseline_sizes.split(",")]
    if args.quick:
        args.seed_list, args.steps, args.real_queries = args.seed_list[:1], 2, 12
        simclr_sizes, baseline_sizes = [96], [96, 128]
        args.simclr_sizes, args.baseline_sizes = "96", "96,128"
    plan = Plan(
        conditions(simclr_sizes, baseline_sizes), args.steps, args.real_queries, real_tissue.material()
    )
    started = time.time()
    per_seed: dict[int, dict[str, Any]] = {}
    values: dict[str, Any] = {}
    for seed in args.seed_list:
        per_seed[seed], kept = one_seed(seed, plan, lambda line: print(line, flush=True))
        values = kept if seed == 0 else values
        full = {**report(args, plan, per_seed, values), "seconds": round(time.time() - started, 1)}
        write_report(args.out, "input_conditions", full)  # after every seed: a stopped run keeps its seeds
    text = markdown(full)
    (args.out / "input_conditions.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
