"""Ingestion at scale: in-process against Celery with one and two workers, and hours per data set.

The same synthetic BACH-like set goes into a fresh embedded index three ways, each through the
real command a user runs (``histocli ingest ... --json``):

* **in_process**: decode/tile in a loader process, embed and upsert in the main one;
* **celery_1** / **celery_2**: ``--queue`` against a real ``redis-server`` on loopback and one or
  two real Celery workers (concurrency 1, torch threads = cores / workers), started and warmed
  up (encoders loaded) before the clock starts.

Tiles/s is the command's own figure (job start to last batch). From the measured one-worker rate,
and the GPU rate when ``benchmarks/results/pipeline_cuda.json`` exists, the report estimates the
hours to index BRACS, BACH and CRC with N workers, assuming linear scaling (a Qdrant server, not
the embedded index, takes the writes of many workers: see the note in the report).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, Row, median_of, ratio
from benchmarks.processes import celery_workers, redis_server
from histo.data.synth import write_synthetic
from histo.encoders.baselines import make_baseline_artifact

NAME = "ingest_scale"
ENCODER = "random"
BIN = Path(sys.executable).parent
MODES = ("in_process", "celery_1", "celery_2")
#: 224 px tiles at stride 224 per data set (before the tissue test drops background).
DATASETS: dict[str, dict[str, Any]] = {
    "BACH": {"tiles": 400 * 9 * 6, "basis": "400 photos of 2048x1536 px: 9 x 6 tiles each (exact)"},
    "CRC": {
        "tiles": 300 * 22 * 32,
        "basis": "300 images of about 5000x7300 px: 22 x 32 tiles each (sizes vary; +-10 %)",
    },
    "BRACS": {
        "tiles": 4539 * 8 * 8,
        "basis": "4,539 RoIs, ASSUMED mean 2000x2000 px at 40x: 8 x 8 tiles each (RoIs vary from "
        "hundreds to >10,000 px: run `histocli data scan` on the real folder for the exact count)",
    },
}
WORKER_COUNTS = (1, 2, 4, 8)


def _scale(quick: bool) -> dict[str, int]:
    if quick:
        return {"tile": 64, "slides": 1, "tiles_per_slide": 16, "batch": 4, "repeats": 1}
    return {"tile": 224, "slides": 4, "tiles_per_slide": 32, "batch": 16, "repeats": 3}


def _env(home: Path, redis_url: str, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update(HISTO_HOME=str(home), HISTO_REDIS__URL=redis_url)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _ingest(root: Path, env: dict[str, str], batch: int, queue: bool) -> dict[str, Any]:
    argv = [str(BIN / "histocli"), "ingest", str(root), "-d", "bach", "-e", ENCODER, "--json"]
    if queue:
        argv += ["--queue", "--batch-size", str(batch)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout))


def _fresh_home(folder: Path, tile: int) -> Path:
    home = Path(tempfile.mkdtemp(dir=folder, prefix="home-"))
    make_baseline_artifact(ENCODER, home / "encoders" / ENCODER, input_size=tile)
    return home


def _mode(
    mode: str, folder: Path, roots: dict[str, Path], redis_url: str, s: dict[str, int]
) -> list[dict[str, Any]]:
    """``repeats`` runs of one mode, each into a fresh index; the workers live across repeats."""
    workers = 0 if mode == "in_process" else int(mode.split("_")[1])
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    runs = []
    if not workers:
        for _ in range(s["repeats"]):
            runs.append(_ingest(roots["data"], _env(_fresh_home(folder, s["tile"]), redis_url, 0), 0, False))
        return runs
    for _ in range(s["repeats"]):
        home = _fresh_home(folder, s["tile"])
        env = _env(home, redis_url, threads)
        with celery_workers(workers, env, folder):
            _ingest(roots["warmup"], env, 1, True)  # every worker loads the encoder off the clock
            runs.append(_ingest(roots["data"], env, s["batch"], True))
    return runs


def estimate(rates: dict[str, float]) -> dict[str, Any]:
    """Hours per data set for N workers at each measured per-worker rate (linear scaling)."""
    table: dict[str, Any] = {}
    for basis, rate in rates.items():
        table[basis] = {
            name: {f"{n}_workers": round(info["tiles"] / (rate * n) / 3600, 2) for n in WORKER_COUNTS}
            for name, info in DATASETS.items()
        }
    return table


def _gpu_rate() -> float | None:
    path = RESULTS_DIR / "pipeline_cuda.json"
    if not path.exists():
        return None
    return float(json.loads(path.read_text())["pipeline_tiles_per_s"])


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    s = _scale(quick)
    with tempfile.TemporaryDirectory(prefix="histo-bench-ingest-") as tmp:
        folder = Path(tmp)
        roots = {"data": folder / "bach", "warmup": folder / "warmup"}
        synth = write_synthetic("bach", roots["data"], s["slides"], s["tiles_per_slide"], 0, s["tile"])
        write_synthetic("bach", roots["warmup"], 1, 8, 1, s["tile"])
        with redis_server(folder) as redis_url:
            runs = {mode: _mode(mode, folder, roots, redis_url, s) for mode in MODES}
    rates = {mode: median_of(r["tiles_per_second"] for r in runs[mode]) for mode in MODES}
    per_worker = {"cpu_worker_measured": rates["celery_1"]}
    gpu = _gpu_rate()
    if gpu:
        per_worker["gpu_worker_measured"] = gpu
    return {
        "encoder": f"{ENCODER} (ResNet-18, orientation pooling from the artifact)",
        "tile_px": s["tile"],
        "tiles": synth.tiles,
        "batch_tiles": s["batch"],
        "repeats": s["repeats"],
        "tiles_per_s": rates,
        "ratio_to_in_process": {m: ratio(rates[m], rates["in_process"]) for m in MODES},
        "all_runs_tiles_per_s": {m: [r["tiles_per_second"] for r in runs[m]] for m in MODES},
        "per_worker_tiles_per_s": per_worker,
        "datasets": DATASETS,
        "hours_estimate": estimate(per_worker),
        "note": (
            "two workers share this machine's cores (and the embedded index's lock), so they cannot "
            "beat one here; on separate GPU machines writing to a Qdrant server the rate scales "
            "with workers until the server's upsert rate is reached"
        ),
    }


def rows(report: dict[str, Any]) -> list[Row]:
    rates, base = report["tiles_per_s"], report["tiles_per_s"]["in_process"]
    out = [
        Row(
            f"ingest {mode} (tiles/s)", f"{rates[mode]:.1f}", f"{base:.1f}", f"{ratio(rates[mode], base):.2f}"
        )
        for mode in MODES
    ]
    for basis, table in report["hours_estimate"].items():
        for name, hours in table.items():
            out.append(
                Row(f"hours to index {name}, {basis} x 1 / 8", f"{hours['1_workers']} / {hours['8_workers']}")
            )
    return out
