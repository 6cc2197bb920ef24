"""Embedding pipeline: tiles/s of the full ingest path against the model's raw forward.

* **raw forward**: ``Embedder.embed`` on tiles decoded beforehand (uint8 arrays in memory), in
  batches of the ingest batch size: normalise, the orientation-pooled forward, L2-normalise.
* **pipeline**: ``histo.ingest.ingest`` into a fresh embedded index: decode and tile in
  ``DataLoader`` worker processes, embed the same batches, upsert points with their payloads.
* **pipeline, other loader setting**: the same with one loader worker where the default has
  none (machines of two cores or fewer), else with decoding in the main process: what the
  default's choice is worth here.

The goal is pipeline / raw >= 0.9: decoding fully hidden behind compute. Encoder: the ``random``
baseline (a random-init ResNet-18 with 4-orientation pooling: the cost of every trained ResNet-18
encoder). On ``--device cuda`` the raw forward also runs at bf16 with batch sizes doubling up to
the card's limit (or the sweep's end), and the pipeline at a few of them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Row, median_of, ratio
from histo.data.datasets import scan_dataset
from histo.data.images import DEFAULT_MAX_PIXELS
from histo.data.records import ImageRecord
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig, iter_tiles
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.ingest import Ingestor, default_workers, ingest
from histo.store import EdgeStore

NAME = "pipeline"
ENCODER = "random"
FIELDS = ("tiles", "batch_size", "raw_tiles_per_s", "pipeline_tiles_per_s", "ratio_pipeline_over_raw")
GPU_BATCHES = (64, 128, 256, 512, 1024, 2048, 4096)


def _scale(quick: bool, device: str) -> dict[str, int]:
    if device.startswith("cuda"):
        return {"tile": 224, "slides": 8, "tiles_per_slide": 256, "repeats": 3}
    if quick:
        return {"tile": 64, "slides": 1, "tiles_per_slide": 32, "repeats": 2}
    return {"tile": 224, "slides": 2, "tiles_per_slide": 64, "repeats": 3}


def _data(folder: Path, scale: dict[str, int]) -> tuple[list[ImageRecord], TilingConfig, np.ndarray]:
    """Synthetic BACH-like images, their records, and all their tiles decoded up front."""
    root = folder / "bach"
    write_synthetic("bach", root, scale["slides"], scale["tiles_per_slide"], seed=0, tile_size=scale["tile"])
    records = scan_dataset(root, "bach").records
    config = TilingConfig(tile_size=scale["tile"])
    tiles = [t.pixels for r in records for t in iter_tiles(r, config, DEFAULT_MAX_PIXELS)]
    return records, config, np.stack(tiles)


def raw_rate(embedder: Embedder, tiles: np.ndarray, batch: int) -> float:
    """Tiles/s of the forward alone, one ``embed`` call per ingest-sized batch."""
    started = time.perf_counter()
    for start in range(0, len(tiles), batch):
        embedder.embed(tiles[start : start + batch])
    _sync(embedder)
    return len(tiles) / (time.perf_counter() - started)


def pipeline_rate(
    embedder: Embedder, records: list[ImageRecord], config: TilingConfig, workers: int, folder: Path
) -> float:
    """Tiles/s of decode + tile + embed + upsert into a fresh index (optimise included)."""
    with tempfile.TemporaryDirectory(dir=folder) as index, EdgeStore(Path(index)) as store:
        ingestor = Ingestor(store, {ENCODER: embedder}, batch_size=embedder.batch_size)
        summary = ingest(records, ingestor, config, DEFAULT_MAX_PIXELS, num_workers=workers, progress=False)
    _sync(embedder)
    return summary.tiles_per_second


def _sync(embedder: Embedder) -> None:
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()


def _measure(
    embedder: Embedder, records: list[ImageRecord], config: TilingConfig, tiles: np.ndarray, repeats: int
) -> dict[str, Any]:
    """Raw and pipeline rates interleaved repeat by repeat, so both see the same machine state."""
    folder = Path(tempfile.mkdtemp(prefix="histo-bench-pipeline-"))
    workers = default_workers()
    other = 0 if workers else 1
    raw, piped, others = [], [], []
    raw_rate(embedder, tiles[: embedder.batch_size], embedder.batch_size)  # warm-up
    pipeline_rate(embedder, records[:1], config, max(workers, other), folder)  # starts the forkserver
    for _ in range(repeats):
        raw.append(raw_rate(embedder, tiles, embedder.batch_size))
        piped.append(pipeline_rate(embedder, records, config, workers, folder))
        others.append(pipeline_rate(embedder, records, config, other, folder))
    raw_m, piped_m, other_m = median_of(raw), median_of(piped), median_of(others)
    return {
        "tiles": len(tiles),
        "batch_size": embedder.batch_size,
        "loader_workers": workers,
        "repeats": repeats,
        "raw_tiles_per_s": raw_m,
        "pipeline_tiles_per_s": piped_m,
        "other_loader_workers": other,
        "pipeline_other_tiles_per_s": other_m,
        "ratio_pipeline_over_raw": ratio(piped_m, raw_m),
        "ratio_other_over_raw": ratio(other_m, raw_m),
        "all_raw": [round(x, 2) for x in raw],
        "all_pipeline": [round(x, 2) for x in piped],
    }


def _gpu_sweep(artifact: Path, tiles: np.ndarray, device: str) -> list[dict[str, Any]]:
    """bf16 raw forward at doubling batch sizes until the card runs out of memory."""
    rows: list[dict[str, Any]] = []
    for batch in GPU_BATCHES:
        embedder = Embedder.from_artifact(artifact, device=device, batch_size=batch)
        reps = np.concatenate([tiles] * max(1, -(-4 * batch // len(tiles))))
        try:
            raw_rate(embedder, reps[:batch], batch)  # warm-up, cudnn autotune
            rates = [raw_rate(embedder, reps, batch) for _ in range(3)]
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch_size": batch, "out_of_memory": True})
            break
        finally:
            del embedder
            torch.cuda.empty_cache()
        rows.append({"batch_size": batch, "raw_tiles_per_s": median_of(rates)})
    return rows


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Measure and return the suite's report (the runner adds machine and timing)."""
    scale = _scale(quick, device)
    with tempfile.TemporaryDirectory(prefix="histo-bench-") as folder:
        records, config, tiles = _data(Path(folder), scale)
        artifact = make_baseline_artifact(ENCODER, Path(folder) / "encoders" / ENCODER, scale["tile"])
        embedder = Embedder.from_artifact(artifact, device=device)
        report: dict[str, Any] = {
            "device": device,
            "encoder": f"{ENCODER} (ResNet-18, {embedder.orientations}-orientation pooling)",
            "tile_px": scale["tile"],
            "images": len(records),
            **_measure(embedder, records, config, tiles, scale["repeats"]),
        }
        if device.startswith("cuda"):
            report["precision"] = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
            report["gpu_batch_sweep"] = _gpu_sweep(artifact, tiles, device)
    return report


def rows(report: dict[str, Any]) -> list[Row]:
    rate = report["raw_tiles_per_s"]
    out = [
        Row("raw forward (tiles/s)", f"{rate:.1f}"),
        Row(
            f"full ingest path, {report['loader_workers']} loader workers (default) (tiles/s)",
            f"{report['pipeline_tiles_per_s']:.1f}",
            f"{rate:.1f}",
            f"{report['ratio_pipeline_over_raw']:.2f}",
        ),
        Row(
            f"full ingest path, {report['other_loader_workers']} loader workers (tiles/s)",
            f"{report['pipeline_other_tiles_per_s']:.1f}",
            f"{rate:.1f}",
            f"{report['ratio_other_over_raw']:.2f}",
        ),
    ]
    for step in report.get("gpu_batch_sweep", []):
        value = "out of memory" if step.get("out_of_memory") else f"{step['raw_tiles_per_s']:.0f}"
        out.append(Row(f"GPU raw forward, batch {step['batch_size']} (tiles/s)", value))
    return out
