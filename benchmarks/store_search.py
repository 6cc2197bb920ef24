"""How fast is a filtered search through the store facade? Embedded edge vs qdrant-client local mode.

For each index size, random unit vectors (``--dim``) with histo-like payloads go into

* ``EdgeStore`` (the embedded Qdrant Edge shard, the default backend), searched before and after
  ``optimize()`` (which builds the HNSW index in-process), and
* ``ServerStore.in_memory()`` (qdrant-client local mode: numpy brute force, the test double for
  the server API; not a Qdrant server),

and each runs the same leave-one-out style query: a stored tile's vector, one dataset, two labels,
minus the query's own image and slide, top 10. Vectors are synthetic but clustered (see
``clustered``). Reports p50/p99 latency per query through the public API (validation
included), ingest time, the local/edge ratio, and the recall@10 of the optimised edge search against
exact search. Writes ``benchmarks/results/store_search.json``.

    .venv/bin/python -m benchmarks.store_search [--quick] [--sizes 10000 100000] [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histo.store import EdgeStore, Point, SearchFilter, ServerStore, VectorStore

RESULTS = Path(__file__).parent / "results" / "store_search.json"
NS = uuid.UUID("0b1d1f55-74b0-4f3e-9a3c-5c1f8a2f6e01")
DATASETS = ("bach", "bracs", "crc")
LABELS = ("a", "b", "c", "d", "e", "f", "g")
TILES_PER_IMAGE = 16
IMAGES_PER_SLIDE = 8


def payload(k: int) -> dict[str, Any]:
    dataset = DATASETS[k % len(DATASETS)]
    image = k // TILES_PER_IMAGE
    return {
        "dataset": dataset,
        "label": LABELS[(k // 7) % len(LABELS)],
        "split": "train",
        "image_id": f"img{image}",
        "slide_id": f"slide{image // IMAGES_PER_SLIDE}",
        "path": f"{dataset}/img{image}.png",
        "x": k,
    }


def query_filter(k: int) -> SearchFilter:
    p = payload(k)
    return SearchFilter(
        dataset=p["dataset"],
        labels=("a", "c"),
        exclude_image_ids=(p["image_id"],),
        exclude_slide_ids=(p["slide_id"],),
    )


def clustered(rng: np.random.Generator, size: int, dim: int, centres: int = 200) -> np.ndarray:
    """Unit vectors around ``centres`` random directions: embeddings have structure, and uniform
    random vectors in high dimension are the worst case of any graph index (recall drops to ~0.5)."""
    means = rng.standard_normal((centres, dim)).astype(np.float32)
    noise = rng.standard_normal((size, dim)).astype(np.float32)
    vectors = means[rng.integers(0, centres, size)] + 0.7 * noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def load(store: VectorStore, vectors: np.ndarray, batch: int = 1000) -> float:
    started = time.perf_counter()
    store.ensure_vectors({"v": vectors.shape[1]})
    for start in range(0, len(vectors), batch):
        store.upsert(
            Point(str(uuid.uuid5(NS, str(k))), {"v": vectors[k]}, payload(k))
            for k in range(start, min(start + batch, len(vectors)))
        )
    return time.perf_counter() - started


def latency(search: Callable[[int], object], picks: np.ndarray, warmup: int = 3) -> dict[str, float]:
    for k in picks[:warmup]:
        search(int(k))
    times = []
    for k in picks:
        started = time.perf_counter()
        search(int(k))
        times.append(time.perf_counter() - started)
    ms = 1000 * np.asarray(times)
    return {
        "queries": len(times),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def measure(size: int, dim: int, queries: int, local_queries: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    vectors = clustered(rng, size, dim)
    picks = rng.choice(size, size=queries, replace=False)

    def query(k: int) -> np.ndarray:
        return vectors[k]  # a stored tile asks for its neighbours; the filter drops its image and slide

    row: dict[str, Any] = {"points": size, "dim": dim}
    with tempfile.TemporaryDirectory(prefix="histo-bench-") as tmp, EdgeStore(Path(tmp) / "index") as edge:
        row["edge_ingest_s"] = round(load(edge, vectors), 2)

        def edge_search(k: int) -> object:
            return edge.search("v", query(k), 10, query_filter(k))

        row["edge_plain"] = latency(edge_search, picks)
        started = time.perf_counter()
        edge.optimize()
        row["edge_optimize_s"] = round(time.perf_counter() - started, 2)
        row["edge_optimized"] = latency(edge_search, picks)
        row["edge_optimized_exact"] = latency(
            lambda k: edge.search("v", query(k), 10, query_filter(k), exact=True), picks
        )
        row["edge_optimized_unfiltered"] = latency(lambda k: edge.search("v", query(k), 10), picks)
        recall = []
        for k in picks[: min(50, len(picks))]:
            approx = {h.id for h in edge.search("v", query(int(k)), 10, query_filter(int(k)))}
            exact = {h.id for h in edge.search("v", query(int(k)), 10, query_filter(int(k)), exact=True)}
            recall.append(len(approx & exact) / max(1, len(exact)))
        row["edge_optimized_recall_at_10"] = round(float(np.mean(recall)), 4)

    with ServerStore.in_memory() as local, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Local mode is not recommended")
        row["local_ingest_s"] = round(load(local, vectors), 2)
        row["local_mode"] = latency(
            lambda k: local.search("v", query(k), 10, query_filter(k)), picks[:local_queries]
        )
    row["ratio_local_over_edge_p50"] = round(row["local_mode"]["p50_ms"] / row["edge_optimized"]["p50_ms"], 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10k points, dim 128 (under a minute)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="queries per edge measurement")
    parser.add_argument("--local-queries", type=int, default=30, help="queries for the slow local mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes, dim = ([10_000], 128) if args.quick else (args.sizes, args.dim)
    rows = []
    for size in sizes:
        row = measure(size, dim, args.queries, args.local_queries, args.seed)
        rows.append(row)
        edge_row, local_row = row["edge_optimized"], row["local_mode"]
        print(
            f"{size:>7} pts dim {dim}: edge p50 {edge_row['p50_ms']:.2f} ms p99 {edge_row['p99_ms']:.2f} ms "
            f"(plain p50 {row['edge_plain']['p50_ms']:.2f} ms, "
            f"recall@10 {row['edge_optimized_recall_at_10']}) "
            f"| local mode p50 {local_row['p50_ms']:.1f} ms p99 {local_row['p99_ms']:.1f} ms "
            f"| ratio {row['ratio_local_over_edge_p50']}x",
            flush=True,
        )
    command = "python -m benchmarks.store_search" + (
        " --quick" if args.quick else f" --sizes {' '.join(map(str, sizes))} --dim {dim}"
    )
    report = {
        "command": command,
        "seed": args.seed,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "query": "a stored tile's vector, top 10; filter: dataset, 2 labels, minus its image and slide",
        "vectors": "synthetic: unit vectors around 200 random centres (noise 0.7 per dimension)",
        "note": "latency through the histo.store API, validation included; local mode is qdrant-client's "
        "in-memory numpy stand-in for the server API, not a Qdrant server",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
