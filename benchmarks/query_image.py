"""Query by image: end-to-end ``Search`` with an uploaded image against embedding alone.

The index: synthetic BRACS tiles (224 px) embedded for real with the ``random`` baseline
(ResNet-18, 4-orientation pooling) and ``colorhist``, then jittered copies of their vectors
(Gaussian noise, renormalised) up to ``points`` points, each copy a new "image" with the original
tile's payload, and HNSW built with ``optimize()``: the copies keep the label structure.

Then ``python -m services.search`` serves it in a subprocess (``--torch-threads 1``) and
``histo.client.SearchClient`` sends, one at a time, top 10 by the ``random`` encoder:

* ``tile``: a 224x224 PNG upload (decode, one query tile, embed, search);
* ``4_tiles``: an 896x224 PNG, cut into 4 query tiles, embedded together, max-combined.

The same uploads then go through ``SearchEngine.search`` in-process, and the same tiles, decoded
beforehand, through ``Embedder.embed`` alone (one torch thread everywhere). Ratios: gRPC and
in-process latency over embedding alone (what decoding, tiling, the search and the transport add).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import Row, latency_summary, ratio, spawn_listening, timed
from histo.client import SearchClient
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.ingest import Ingestor, ingest
from histo.search import SearchEngine
from histo.store import EdgeStore, Point

NAME = "query_image"
NS = uuid.UUID("5a4c2f1e-9b0d-4e8a-b7c6-3d2e1f0a9b8c")
ENCODERS = ("random", "colorhist")
TILE = 224


def build_index(home: Path, points: int, slides: int, seed: int, input_size: int = TILE) -> dict[str, Any]:
    """Synthetic BRACS tiles, embedded for real, then jittered copies up to ``points``."""
    started = time.perf_counter()
    data = home / "data" / "bracs"
    write_synthetic("bracs", data, slides=slides, tiles_per_slide=28, seed=seed, tile_size=TILE)
    for name in ENCODERS:
        make_baseline_artifact(name, home / "encoders" / name, input_size=input_size)
    embedders = {n: Embedder.from_artifact(home / "encoders" / n, device="cpu") for n in ENCODERS}
    rendered = time.perf_counter()
    with EdgeStore(home / "index") as store:
        records = scan_dataset(data, "bracs").records
        ingest(
            records,
            Ingestor(store, embedders),
            TilingConfig(tile_size=TILE),
            10**9,
            num_workers=0,
            progress=False,
        )
        real = list(store.scroll(with_vectors=list(ENCODERS)))
        embedded = time.perf_counter()
        rng = np.random.default_rng(seed)
        copies = max(0, points - len(real))
        batch: list[Point] = []
        for n in range(copies):
            source = real[n % len(real)]
            generation = n // len(real) + 1
            vectors = {}
            for name in ENCODERS:
                v = np.asarray(source.vectors[name], dtype=np.float32)
                v = v + rng.normal(0.0, 0.35 / np.sqrt(v.size), v.size).astype(np.float32)
                vectors[name] = v / np.linalg.norm(v)
            payload = dict(source.payload)
            payload["image_id"] = f"{payload['image_id']}~{generation}"
            payload["slide_id"] = f"{payload['slide_id']}~{generation}"
            batch.append(Point(str(uuid.uuid5(NS, f"{source.id}#{generation}")), vectors, payload))
            if len(batch) == 2000:
                store.upsert(batch)
                batch = []
        store.upsert(batch)
        store.optimize()
        total = store.count()
    return {
        "points": total,
        "real_tiles": len(real),
        "jittered_copies": copies,
        "encoders": {n: e.dim for n, e in embedders.items()},
        "render_s": round(rendered - started, 1),
        "embed_s": round(embedded - rendered, 1),
        "build_s": round(time.perf_counter() - started, 1),
    }


def serve(
    home: Path, settings: dict[str, str] | None = None, torch_threads: int | None = 1
) -> tuple[subprocess.Popen[str], str]:
    """``python -m services.search`` on a free loopback port over ``home``, with extra ``HISTO_*``
    ``settings`` and ``torch_threads`` per forward pass (None: torch's choice, every core);
    returns the process and its address."""
    threads = ["--torch-threads", str(torch_threads)] if torch_threads else []
    env = {**os.environ, "HISTO_HOME": str(home), "HISTO_GRPC__TOKEN": "", **(settings or {})}
    env.pop("HISTO_QDRANT__URL", None)
    argv = [sys.executable, "-m", "services.search", "--host", "127.0.0.1", "--port", "0",
            *threads, "--log-level", "WARNING"]  # fmt: skip
    return spawn_listening(argv, env, "the search service")


def uploads(home: Path, count: int) -> dict[str, list[bytes]]:
    """PNG bytes: single 224 px tiles, and 4-tile strips, cut from the synthetic images."""
    images = sorted((home / "data" / "bracs").rglob("*.png"))[:count]
    out: dict[str, list[bytes]] = {"tile": [], "4_tiles": []}
    for path in images:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        for kind, width in (("tile", TILE), ("4_tiles", 4 * TILE)):
            strip = Image.new("RGB", (width, TILE))
            for x in range(0, width, TILE):
                strip.paste(rgb.crop((0, 0, TILE, TILE)), (x, 0))
            buffer = io.BytesIO()
            strip.save(buffer, format="PNG")
            out[kind].append(buffer.getvalue())
    return out


def decoded(data: bytes) -> np.ndarray:
    """The upload's query tiles as the engine cuts them (224 px, left to right)."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return np.stack([rgb[:, x : x + TILE] for x in range(0, rgb.shape[1], TILE)])


def query_sets(home: Path, count: int, ids: int) -> dict[str, list[dict[str, Any]]]:
    """Keyword arguments of ``search`` per kind: the two uploads, and stored ids for comparison."""
    with EdgeStore(home / "index") as store:
        point_ids = [r.id for r in store.scroll()]
    picks = np.random.default_rng(0).choice(len(point_ids), ids, replace=False)
    sets = {kind: [{"image": b} for b in data] for kind, data in uploads(home, count).items()}
    sets["by_id"] = [{"point_id": point_ids[i]} for i in picks]
    return sets


Sets = dict[str, list[dict[str, Any]]]


def _grpc(home: Path, sets: Sets) -> dict[str, list[float]]:
    process, address = serve(home)
    try:
        with SearchClient(address, timeout=120) as client:
            client.wait_ready(300)
            return {
                kind: timed(lambda q: client.search(encoder="random", top_k=10, **q), queries)[0]
                for kind, queries in sets.items()
            }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def _in_process(home: Path, sets: Sets) -> tuple[dict[str, list[float]], ...]:
    with EdgeStore(home / "index") as store:
        engine = SearchEngine.load(store, home / "encoders", tiling=TilingConfig(tile_size=TILE))
        search = {
            kind: timed(lambda q: engine.search(encoder="random", top_k=10, **q), queries)[0]
            for kind, queries in sets.items()
        }
    embedder = Embedder.from_artifact(home / "encoders" / "random", device="cpu")
    embed = {
        kind: timed(embedder.embed, [decoded(q["image"]) for q in queries])[0]
        for kind, queries in sets.items()
        if kind != "by_id"
    }
    return search, embed


def _compare(remote: list[float], local: list[float], embed: list[float] | None) -> dict[str, Any]:
    g, i = latency_summary(remote), latency_summary(local)
    row: dict[str, Any] = {"grpc": g, "in_process": i}
    if embed is not None:
        e = latency_summary(embed)
        row["embed_only"] = e
        row["ratio_grpc_over_embed_p50"] = ratio(g["p50_ms"], e["p50_ms"], 2)
        row["ratio_in_process_over_embed_p50"] = ratio(i["p50_ms"], e["p50_ms"], 2)
    row["ratio_grpc_over_in_process_p50"] = ratio(g["p50_ms"], i["p50_ms"], 2)
    return row


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    # quick: the encoder sees 64 px (uploads stay 224 px tiles): the path runs, the figures are small
    points, count, ids, slides, size = (1000, 8, 20, 1, 64) if quick else (10_000, 60, 300, 10, TILE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="histo-bench-") as folder:
            home = Path(folder)
            index = build_index(home, points, slides, seed=0, input_size=size)
            sets = query_sets(home, count, ids)
            remote = _grpc(home, sets)
            local, embed = _in_process(home, sets)
    finally:
        torch.set_num_threads(threads)
    results = {kind: _compare(remote[kind], local[kind], embed.get(kind)) for kind in sets}
    return {
        "index": index,
        "torch_threads": 1,
        "queries": {
            "tile": "a 224x224 PNG upload (one query tile), top 10",
            "4_tiles": "an 896x224 PNG (4 query tiles, max-combined), top 10",
            "by_id": "a stored tile's id, top 10, its own image excluded (the default)",
        },
        "results": results,
    }


def rows(report: dict[str, Any]) -> list[Row]:
    out = []
    for kind, r in report["results"].items():
        base = "embed_only" if "embed_only" in r else "in_process"
        short = base.removesuffix("_only")
        for path in ("grpc", "in_process") if base == "embed_only" else ("grpc",):
            out.append(
                Row(
                    f"query {kind}, {path}: p50 / p99 ms",
                    f"{r[path]['p50_ms']:.1f} / {r[path]['p99_ms']:.1f}",
                    f"{base.replace('_', ' ')} {r[base]['p50_ms']:.1f}",
                    f"{r[f'ratio_{path}_over_{short}_p50']:.2f}",
                )
            )
    return out
