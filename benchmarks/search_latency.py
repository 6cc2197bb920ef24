"""Latency of ``Search`` over gRPC on loopback versus the same queries in-process, on a 10k index.

The index: a few hundred synthetic BRACS tiles (224 px) embedded with two real encoders, the
``random`` baseline (ResNet-18, 4-orientation pooling) and ``colorhist``, then jittered copies of
their vectors (Gaussian noise, renormalised) up to ``--points`` points, each copy a new "image"
with the original tile's payload (dataset, label, split, slide, path, box), and HNSW built with
``optimize()``. The copies keep the label structure of the real tiles.

Then ``python -m services.search`` serves that index in a subprocess (``--torch-threads 1``), and
``histo.client.SearchClient`` in this process sends, one at a time:

* ``by_id``: a stored tile's id, top 10, two labels, the query's own image excluded (the default);
* ``by_image_tile/<encoder>``: a 224x224 PNG tile upload, top 10 (decode, embed, search);
* ``by_image_4_tiles/random``: a 896x224 PNG, cut into 4 query tiles, max-combined, top 10.

After the server exits, the same queries run in-process through ``SearchEngine.search`` (one torch
thread too). Reported: p50/p99/mean per path, their ratio (gRPC / in-process), the server's own
``took_ms``, and per query the client's latency minus the server's ``took_ms``: the transport and
(de)serialisation overhead, measured under the same conditions as the call itself (the two
phases run at different times; on a shared machine their ratio also reflects the load then, which
is recorded at start and end).

    .venv/bin/python -m benchmarks.search_latency [--quick] [--points 10000]

Writes ``benchmarks/results/search_latency.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from histo.client import SearchClient
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.ingest import Ingestor, ingest
from histo.search import SearchEngine
from histo.store import EdgeStore, Point, SearchFilter

RESULTS = Path(__file__).parent / "results" / "search_latency.json"
NS = uuid.UUID("5a4c2f1e-9b0d-4e8a-b7c6-3d2e1f0a9b8c")
ENCODERS = ("random", "colorhist")
TILE = 224


def build_index(home: Path, points: int, slides: int, seed: int) -> dict[str, Any]:
    """Synthetic BRACS tiles, embedded for real, then jittered copies up to ``points``."""
    started = time.perf_counter()
    data = home / "data" / "bracs"
    write_synthetic("bracs", data, slides=slides, tiles_per_slide=28, seed=seed, tile_size=TILE)
    for name in ENCODERS:
        make_baseline_artifact(name, home / "encoders" / name, input_size=TILE)
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


def query_sets(
    home: Path, ids: list[str], counts: dict[str, int], seed: int
) -> dict[str, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    images = sorted((home / "data" / "bracs").rglob("*.png"))
    big = [p.read_bytes() for p in images[:20]]
    tiles = []
    for path in images[:20]:
        with Image.open(path) as im:
            buffer = io.BytesIO()
            im.convert("RGB").crop((0, 0, TILE, TILE)).save(buffer, format="PNG")
            tiles.append(buffer.getvalue())
    labels = SearchFilter(labels=("DCIS", "IC"))
    by_id = [
        {"point_id": ids[i], "filter": labels} for i in rng.choice(len(ids), counts["by_id"], replace=False)
    ]
    return {
        "by_id/random": [{**q, "encoder": "random"} for q in by_id],
        "by_image_tile/random": [
            {"image": tiles[i % len(tiles)], "encoder": "random"} for i in range(counts["tile"])
        ],
        "by_image_tile/colorhist": [
            {"image": tiles[i % len(tiles)], "encoder": "colorhist"} for i in range(counts["tile"])
        ],
        "by_image_4_tiles/random": [
            {"image": big[i % len(big)], "encoder": "random"} for i in range(counts["big"])
        ],
    }


def timed(
    call: Callable[[dict[str, Any]], Any], queries: list[dict[str, Any]], warmup: int
) -> tuple[list[float], list[Any]]:
    for query in queries[:warmup]:
        call(query)
    times, results = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(call(query))
        times.append((time.perf_counter() - started) * 1000.0)
    return times, results


def summary(times: list[float]) -> dict[str, float]:
    array = np.asarray(times)
    return {
        "queries": len(times),
        "p50_ms": round(float(np.percentile(array, 50)), 3),
        "p99_ms": round(float(np.percentile(array, 99)), 3),
        "mean_ms": round(float(array.mean()), 3),
    }


def client_call(client: SearchClient) -> Callable[[dict[str, Any]], Any]:
    def call(query: dict[str, Any]) -> Any:
        return client.search(top_k=10, **query)

    return call


def serve(home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "HISTO_HOME": str(home), "HISTO_GRPC__TOKEN": ""}
    env.pop("HISTO_QDRANT__URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.search", "--host", "127.0.0.1", "--port", "0",
         "--torch-threads", "1", "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, match.group(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 2k index and few queries: a smoke run")
    parser.add_argument("--points", type=int, default=None, help="index size (default 10000; quick 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    points = options.points or (2000 if options.quick else 10_000)
    counts = {"by_id": 40, "tile": 15, "big": 6} if options.quick else {"by_id": 300, "tile": 100, "big": 30}
    slides = 3 if options.quick else 10
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="histo-bench-") as folder:
        home = Path(folder)
        index = build_index(home, points, slides, options.seed)
        with EdgeStore(home / "index") as store:
            ids = [r.id for r in store.scroll()]
        sets = query_sets(home, ids, counts, options.seed)

        process, address = serve(home)
        remote: dict[str, tuple[list[float], list[Any]]] = {}
        try:
            with SearchClient(address, timeout=120) as client:
                client.wait_ready(300)
                for name, queries in sets.items():
                    remote[name] = timed(client_call(client), queries, warmup=3)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)

        local: dict[str, tuple[list[float], list[Any]]] = {}
        with EdgeStore(home / "index") as store:
            engine = SearchEngine.load(store, home / "encoders", tiling=TilingConfig(tile_size=TILE))
            for name, queries in sets.items():
                local[name] = timed(lambda q: engine.search(top_k=10, **q), queries, warmup=3)

    results = {}
    for name in sets:
        grpc_times, grpc_results = remote[name]
        local_times, local_results = local[name]
        g, i = summary(grpc_times), summary(local_times)
        same = sum(a.hits == b.hits for a, b in zip(grpc_results, local_results, strict=True))
        results[name] = {
            "grpc_loopback": g,
            "in_process": i,
            "server_took_ms_p50": round(float(np.percentile([r.took_ms for r in grpc_results], 50)), 3),
            # per query: client latency minus the server's own time = transport and (de)serialisation
            "transport_overhead_ms": summary(
                [t - r.took_ms for t, r in zip(grpc_times, grpc_results, strict=True)]
            ),
            "ratio_p50": round(g["p50_ms"] / i["p50_ms"], 2),
            "ratio_p99": round(g["p99_ms"] / i["p99_ms"], 2),
            "identical_hits": f"{same}/{len(grpc_results)}",
        }
    report = {
        "command": "python -m benchmarks.search_latency" + (" --quick" if options.quick else ""),
        "seed": options.seed,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": 1,
            "system": platform.platform(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "index": index,
        "queries": {
            "by_id": "a stored tile's id, top 10, labels DCIS or IC, own image excluded (the default)",
            "by_image_tile": "a 224x224 PNG upload (one query tile), top 10",
            "by_image_4_tiles": "a 896x224 PNG (4 query tiles, max-combined), top 10",
        },
        "note": (
            "synthetic index: real embeddings of synthetic tiles plus jittered copies; client and server "
            "on one 2-core machine over 127.0.0.1; one query at a time; ratio = gRPC / in-process"
        ),
        "results": results,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: {"grpc": v["grpc_loopback"], "in_process": v["in_process"]} for k, v in results.items()},
            indent=1,
        )
    )
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
