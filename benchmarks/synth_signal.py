"""Does the synthetic H&E carry the class in morphology and not in colour? (DESIGN.md §6)

For each synthetic data set: write it with ``write_synthetic``, read it back with the real
adapter and tiler, and measure cross-slide leave-one-out 5-NN accuracy (neighbours from other
slides or patients only, ``record.group_id``) of

* a colour feature: 8x8x8 joint RGB histogram (Hellinger distance), which must stay within 0.15
  of chance, and
* a morphology feature: nuclear count, mean / median area and area spread from the deconvolved
  haematoxylin channel (z-scored, Euclidean), which must sit well above chance.

Writes ``benchmarks/results/synth_signal.json`` and prints a table. Numbers are synthetic.

    .venv/bin/python -m benchmarks.synth_signal [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from histo.data.datasets import scan_dataset
from histo.data.synth import (
    CLASS_TABLES,
    SYNTH_DATASETS,
    colour_features,
    cross_group_knn,
    morphology_features,
    render_tile,
    write_synthetic,
)
from histo.data.tiling import TilingConfig, iter_tiles

FULL = {"bach": (12, 16), "bracs": (12, 28), "crc": (12, 12)}  # slides, tiles per slide
QUICK = {"bach": (6, 8), "bracs": (6, 14), "crc": (6, 6)}
RESULTS = Path(__file__).parent / "results" / "synth_signal.json"


def measure(dataset: str, slides: int, tiles_per_slide: int, seed: int, workdir: Path) -> dict[str, object]:
    """Write one synthetic data set, tile it as ingestion would, and score both features."""
    started = time.perf_counter()
    summary = write_synthetic(dataset, workdir / dataset, slides, tiles_per_slide, seed)
    write_s = time.perf_counter() - started
    scan = scan_dataset(summary.root, dataset)
    tiles, labels, groups = [], [], []
    for record in scan.records:
        for tile in iter_tiles(record, TilingConfig()):
            tiles.append(tile.pixels)
            labels.append(str(record.label))
            groups.append(record.group_id)
    n_classes = len(CLASS_TABLES[dataset])
    return {
        "slides": slides,
        "tiles_per_slide": tiles_per_slide,
        "images": summary.images,
        "tiles": len(tiles),
        "tiles_expected": summary.tiles,
        "scan_problems": len(scan.problems),
        "chance": round(1 / n_classes, 4),
        "colour_acc": round(cross_group_knn(colour_features(tiles), labels, groups), 4),
        "morphology_acc": round(
            cross_group_knn(morphology_features(tiles), labels, groups, standardise=True), 4
        ),
        "write_seconds": round(write_s, 2),
    }


def tile_render_ms(repeats: int = 10) -> float:
    """Median wall time to render one 224 x 224 field (bach Invasive, the busiest class)."""
    times = []
    for slide in range(repeats):
        started = time.perf_counter()
        render_tile("bach", "Invasive", seed=0, slide=slide)
        times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer slides and tiles (about a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="histo-synth-") as tmp:
        for dataset in SYNTH_DATASETS:
            results[dataset] = measure(dataset, *sizes[dataset], args.seed, Path(tmp))
    report = {
        "command": "python -m benchmarks.synth_signal"
        + (" --quick" if args.quick else "")
        + f" --seed {args.seed}",
        "seed": args.seed,
        "note": "synthetic data: checks the generator, does not predict real-data performance",
        "knn": "leave-one-out 5-NN majority vote, neighbours from other slides/patients only (group_id)",
        "colour_feature": "8x8x8 joint RGB histogram, L1-normalised, Hellinger distance",
        "morphology_feature": (
            "H-channel Otsu nuclei: log count, log mean area, area CV, log median area; z-scored"
        ),
        "render_ms_per_224_tile": tile_render_ms(),
        "datasets": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'dataset':8} {'tiles':>6} {'chance':>7} {'colour':>7} {'morph':>7}")
    for dataset, row in results.items():
        assert isinstance(row, dict)
        scores = f"{row['chance']:>7.3f} {row['colour_acc']:>7.3f} {row['morphology_acc']:>7.3f}"
        print(f"{dataset:8} {row['tiles']:>6} {scores}")
    print(f"render: {report['render_ms_per_224_tile']} ms per 224x224 tile; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
