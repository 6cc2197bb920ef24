"""What orientation pooling costs and gains, per encoder.

For every artifact in ``--encoders-dir`` (plus the random baseline), embeds the tiles of a
synthetic BACH-like set with pooling 1, 4 and 8 and measures:

- cost: milliseconds per tile (median of repeats), as a ratio to pooling 1 in the same run;
- rotation robustness: each tile rotated by 90° / flipped is used as a query against the
  unrotated index; the fraction whose own tile comes back first (a tile has no "up");
- retrieval: cross-slide 5-NN majority-vote accuracy on the class labels.

``python -m benchmarks.orientation_pooling [--quick] [--encoders-dir DIR]`` writes
``benchmarks/results/orientation_pooling.json``. Numbers are on synthetic data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from histo.data.datasets import scan_dataset
from histo.data.synth import cross_group_knn, write_synthetic
from histo.data.tiling import TilingConfig, iter_tiles
from histo.embedding import Embedder
from histo.encoders.artifact import list_artifacts
from histo.encoders.baselines import make_baseline_artifact

RESULTS = Path(__file__).parent / "results" / "orientation_pooling.json"


def _tiles(root: Path, slides: int, per_slide: int) -> tuple[np.ndarray, list[str], list[str]]:
    write_synthetic("bach", root, slides=slides, tiles_per_slide=per_slide, seed=7)
    tiles, labels, groups = [], [], []
    for record in scan_dataset(root, "bach").records:
        for tile in iter_tiles(record, TilingConfig()):
            tiles.append(tile.pixels)
            labels.append(record.label or "")
            groups.append(record.group_id)
    return np.stack(tiles), labels, groups


def _self_retrieval(embedder: Embedder, tiles: np.ndarray, index: np.ndarray) -> float:
    variants = [np.rot90(tiles, 1, axes=(1, 2)), np.rot90(tiles, 3, axes=(1, 2)), np.flip(tiles, axis=2)]
    hits = 0
    for variant in variants:
        queries = embedder.embed(np.ascontiguousarray(variant))
        hits += int((np.argmax(queries @ index.T, axis=1) == np.arange(len(tiles))).sum())
    return hits / (len(variants) * len(tiles))


def measure(folder: Path, tiles: np.ndarray, labels: list[str], groups: list[str], repeats: int) -> dict:
    rows = {}
    for pooling in (1, 4, 8):
        embedder = Embedder.from_artifact(folder, orientation_pooling=pooling, batch_size=32)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            index = embedder.embed(tiles)
            times.append((time.perf_counter() - started) * 1000 / len(tiles))
        rows[pooling] = {
            "ms_per_tile": round(statistics.median(times), 2),
            "self_retrieval_rotated": round(_self_retrieval(embedder, tiles, index), 4),
            "knn5_cross_slide": round(cross_group_knn(index, labels, groups, k=5), 4),
        }
    for row in rows.values():
        row["cost_ratio"] = round(row["ms_per_tile"] / rows[1]["ms_per_tile"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--encoders-dir", type=Path, default=Path(".histo/encoders"))
    args = parser.parse_args()
    slides, per_slide, repeats = (4, 4, 1) if args.quick else (8, 8, 3)
    with tempfile.TemporaryDirectory() as tmp:
        tiles, labels, groups = _tiles(Path(tmp) / "bach", slides, per_slide)
        folders = {"random": make_baseline_artifact("random", Path(tmp) / "random")}
        folders.update({meta.name: f for f, meta in list_artifacts(args.encoders_dir) if meta.kind == "ssl"})
        results = {name: measure(folder, tiles, labels, groups, repeats) for name, folder in folders.items()}
    report = {
        "command": "python -m benchmarks.orientation_pooling" + (" --quick" if args.quick else ""),
        "data": f"synthetic bach, {slides} slides x {per_slide} tiles ({len(labels)} tiles), seed 7",
        "note": "synthetic data; ms_per_tile is a median over repeats on this machine's CPU",
        "encoders": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"{'encoder':14} {'pool':>4} {'ms/tile':>8} {'cost':>5} {'rot self@1':>10} {'kNN5':>6}")
    for name, rows in results.items():
        for pooling, row in rows.items():
            print(
                f"{name:14} {pooling:>4} {row['ms_per_tile']:>8} {row['cost_ratio']:>5} "
                f"{row['self_retrieval_rotated']:>10} {row['knn5_cross_slide']:>6}"
            )


if __name__ == "__main__":
    main()
