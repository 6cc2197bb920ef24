"""Search at scale: histo's store, its gRPC service, qdrant-client local mode and FAISS, side by side.

Each index holds ``points`` tiles with four named 512-d vectors (one per SSL method) and the
payload ingestion writes (dataset, label, split, image, slide, path, box, tile size). Vectors are
synthetic but clustered like embeddings (uniform random vectors are the worst case of any graph
index). Every query is a stored tile's ``simclr`` vector, top 10, one caller at a time, run twice:
unfiltered, and filtered to the tile's dataset and two labels (10-22 % of the points pass).

* **edge**: ``EdgeStore.search`` in-process (the embedded Qdrant engine; HNSW built by
  ``optimize()`` when the index is at most ``hnsw_max`` points, else the plain full scan), and the
  same with ``exact=True``, the ground truth of its recall.
* **grpc**: the same queries as vectors through ``python -m services.search`` over 127.0.0.1.
* **qdrant_local**: ``qdrant-client``'s ``:memory:`` mode (numpy brute force; what the server API
  looks like in tests), up to ``local_max`` points.
* **faiss_flat** (``IndexFlatIP``, exact) and **faiss_hnsw** (``IndexHNSWFlat`` with Qdrant's
  default graph: m=16, ef_construct=100, ef=100). FAISS has no payloads: filters are
  ``IDSelectorBitmap`` masks precomputed per filter, a cost left out of its latency.

Reported per size and backend: p50/p99/mean latency, queries/s, build time, recall@10 of each
approximate search against its exact one, and memory and disk per million points.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import signal
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    MIB,
    Row,
    folder_mib,
    latency_summary,
    per_million,
    ratio,
    recall_at,
    rss_mib,
    timed,
)
from histo.client import SearchClient
from histo.encoders.baselines import make_baseline_artifact
from histo.store import EdgeStore, Point, SearchFilter, ServerStore, VectorStore
from histo.store.base import IndexOptions

NAME = "search"
VECTORS = ("simclr", "nnclr", "barlow_twins", "swav")
QUERIED = VECTORS[0]
NS = uuid.UUID("0b1d1f55-74b0-4f3e-9a3c-5c1f8a2f6e01")
LABELS = {
    "bracs": ("N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC"),
    "bach": ("Normal", "Benign", "InSitu", "Invasive"),
    "crc": ("normal", "low_grade", "high_grade"),
}
DATASETS = tuple(LABELS)
TILES_PER_IMAGE, IMAGES_PER_SLIDE, CHUNK = 64, 8, 10_000
HNSW_M, HNSW_EF = 16, 100  # Qdrant's defaults, given to FAISS too
BACKENDS = ("edge", "edge_exact", "grpc", "qdrant_local", "faiss_flat", "faiss_hnsw")


@dataclass
class Scale:
    sizes: list[int]
    dim: int
    queries: int
    local_queries: int
    hnsw_max: int
    local_max: int
    all_vectors_max: int
    seed: int = 0


def scale_for(quick: bool) -> Scale:
    if quick:
        return Scale([2000], 512, 40, 10, hnsw_max=2000, local_max=2000, all_vectors_max=2000)
    # Above 100k: HNSW builds (~5 min per 100k points and vector on 2 cores) and qdrant-client's
    # brute force (seconds per query) leave the run's time budget; four vectors at 1M (~9 GB on
    # disk, ~11 GB resident, from the 100k figures) leave this 24 GiB machine's memory.
    return Scale([10_000, 100_000, 1_000_000], 512, 200, 20, 100_000, 100_000, all_vectors_max=100_000)


# -- the synthetic archive --------------------------------------------------------------------------


def label_of(k: np.ndarray | int, dataset_index: np.ndarray | int) -> np.ndarray | int:
    """The k-th tile's label index within its dataset: whole images share one label."""
    image = np.asarray(k) // TILES_PER_IMAGE
    sizes = np.array([len(LABELS[d]) for d in DATASETS])
    return (image // 3) % sizes[dataset_index]


def payload(k: int) -> dict[str, Any]:
    """A tile payload of the shape ``histo.data.records.tile_payload`` writes."""
    d = k % len(DATASETS)
    dataset, image = DATASETS[d], k // TILES_PER_IMAGE
    col, row = divmod(k % TILES_PER_IMAGE, 8)
    return {
        "dataset": dataset,
        "label": LABELS[dataset][int(label_of(k, d))],
        "split": ("train", "val", "test")[image % 3],
        "image_id": f"{dataset}-img{image}",
        "slide_id": f"{dataset}-slide{image // IMAGES_PER_SLIDE}",
        "path": f"{dataset}/train/img{image}.png",
        "x": 224 * col,
        "y": 224 * row,
        "w": 224,
        "h": 224,
        "tile_size": 224,
    }


def query_filter(k: int) -> SearchFilter:
    """The tile's own dataset and two of its labels."""
    d = k % len(DATASETS)
    labels = LABELS[DATASETS[d]]
    own = int(label_of(k, d))
    return SearchFilter(dataset=DATASETS[d], labels=(labels[own], labels[(own + 1) % len(labels)]))


def vectors(name: int, start: int, stop: int, dim: int, seed: int) -> np.ndarray:
    """Rows ``start:stop`` of named vector ``name``: unit vectors around 200 centres, generated
    chunk by chunk from fixed seeds, so a million points never need four copies in memory."""
    centres = np.random.default_rng([seed, name]).standard_normal((200, dim)).astype(np.float32)
    parts = []
    for chunk in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        rng = np.random.default_rng([seed, name, chunk])
        size = CHUNK
        rows = centres[rng.integers(0, 200, size)] + 0.7 * rng.standard_normal((size, dim), np.float32)
        lo, hi = max(start, chunk * CHUNK) - chunk * CHUNK, min(stop, (chunk + 1) * CHUNK) - chunk * CHUNK
        parts.append(rows[lo:hi])
    out = np.concatenate(parts)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def vectors_at(ks: list[int], dim: int, seed: int) -> np.ndarray:
    """The queried vector of the sorted points ``ks``, each chunk generated once."""
    chunks: dict[int, np.ndarray] = {}
    for k in ks:
        c = k // CHUNK
        if c not in chunks:
            chunks[c] = vectors(0, c * CHUNK, (c + 1) * CHUNK, dim, seed)
    return np.stack([chunks[k // CHUNK][k % CHUNK] for k in ks])


def point_id(k: int) -> str:
    return str(uuid.uuid5(NS, str(k)))


def fill(store: VectorStore, points: int, dim: int, seed: int, names: tuple[str, ...] = VECTORS) -> float:
    """Upsert every point with all its named vectors; seconds taken."""
    started = time.perf_counter()
    store.ensure_vectors({n: dim for n in names})
    for start in range(0, points, CHUNK):
        stop = min(points, start + CHUNK)
        block = {n: vectors(VECTORS.index(n), start, stop, dim, seed) for n in names}
        for lo in range(start, stop, 1000):
            store.upsert(
                Point(point_id(k), {n: block[n][k - start] for n in names}, payload(k))
                for k in range(lo, min(stop, lo + 1000))
            )
    return time.perf_counter() - started


# -- one backend's measurement ---------------------------------------------------------------------


@dataclass
class Measured:
    """Latency of the unfiltered and filtered query sets, with the ids they returned."""

    summaries: dict[str, Any] = field(default_factory=dict)
    ids: dict[str, list[list[Any]]] = field(default_factory=dict)


def measure(search: Callable[[int, bool], list[Any]], count: int) -> Measured:
    """Query ``i`` of ``range(count)`` asks for stored tile ``picks[i]`` with vector ``queries[i]``."""
    out = Measured()
    for filtered in (False, True):
        key = "filtered" if filtered else "unfiltered"

        def call(i: int, filtered: bool = filtered) -> list[Any]:
            return search(i, filtered)

        times, results = timed(call, range(count))
        out.summaries[key] = latency_summary(times)
        out.ids[key] = results
    return out


def hit_ids(hits: list[Any]) -> list[str]:
    return [h.id for h in hits]


# -- backends --------------------------------------------------------------------------------------


#: This suite measures the float vectors as they are; ``benchmarks.quantization`` the compressed ones.
UNQUANTIZED = IndexOptions("none")


def run_edge(
    home: Path,
    points: int,
    s: Scale,
    picks: list[int],
    queries: np.ndarray,
    names: tuple[str, ...],
    options: IndexOptions = UNQUANTIZED,
) -> dict[str, Any]:
    """Build, then reopen cold and measure: HNSW (when built), exact, memory and disk."""
    row: dict[str, Any] = {}
    with EdgeStore(home / "index", options=options) as store:
        row["build_s"] = round(fill(store, points, s.dim, s.seed, names), 2)
        hnsw = points <= s.hnsw_max
        if hnsw:
            started = time.perf_counter()
            store.optimize()
            row["optimize_s"] = round(time.perf_counter() - started, 2)
    gc.collect()
    before = rss_mib()
    with EdgeStore(home / "index", options=options) as store:

        def search(i: int, filtered: bool, exact: bool = False) -> list[str]:
            flt = query_filter(picks[i]) if filtered else None
            return hit_ids(store.search(QUERIED, queries[i], 10, flt, exact=exact))

        approx = measure(search, len(picks))
        memory = rss_mib() - before  # before the exact scans page every float vector in
        exact = measure(lambda i, f: search(i, f, exact=True), len(picks))
    disk = folder_mib(home / "index")
    row.update(
        index="optimised (HNSW)" if hnsw else "plain (full scan: HNSW build skipped above hnsw_max)",
        latency=approx.summaries,
        recall_at_10={k: recall_at(approx.ids[k], exact.ids[k]) for k in approx.ids},
        memory_mib=round(memory, 1),
        memory_mib_per_million=per_million(memory, points),
        disk_mib=round(disk, 1),
        disk_mib_per_million=per_million(disk, points),
    )
    exact_row = {"latency": exact.summaries, "recall_at_10": {"unfiltered": 1.0, "filtered": 1.0}}
    return {"edge": row, "edge_exact": exact_row, "_truth": exact.ids}


def run_grpc(
    home: Path, s: Scale, picks: list[int], queries: np.ndarray, names: tuple[str, ...]
) -> dict[str, Any]:
    """The same vector queries through ``python -m services.search`` on loopback."""
    from benchmarks.query_image import serve

    for name in names:  # the service needs an encoder per vector it searches
        make_baseline_artifact("random", home / "encoders" / name, input_size=32)
    process, address = serve(home)
    try:
        with SearchClient(address, timeout=600) as client:
            client.wait_ready(300)

            def search(i: int, filtered: bool) -> list[str]:
                flt = query_filter(picks[i]) if filtered else None
                vector = queries[i]
                result = client.search(vector=vector, encoder=QUERIED, top_k=10, filter=flt)
                return [h.id for h in result.hits]

            got = measure(search, len(picks))
            server_rss = rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    return {"latency": got.summaries, "server_rss_mib": round(server_rss, 1), "_ids": got.ids}


def run_local(points: int, s: Scale, picks: list[int], queries: np.ndarray) -> dict[str, Any]:
    """qdrant-client ``:memory:`` mode with the same four vectors and payloads."""
    gc.collect()
    before = rss_mib()
    with ServerStore.in_memory() as store, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Local mode is not recommended")
        build = fill(store, points, s.dim, s.seed)

        def search(i: int, filtered: bool) -> list[str]:
            flt = query_filter(picks[i]) if filtered else None
            return hit_ids(store.search(QUERIED, queries[i], 10, flt))

        got = measure(search, min(s.local_queries, len(picks)))
        memory = rss_mib() - before
    return {
        "build_s": round(build, 2),
        "latency": got.summaries,
        "memory_mib_per_million": per_million(memory, points),
        "_ids": got.ids,
    }


class FaissMasks:
    """One ``IDSelectorBitmap`` per distinct filter, built once from the payload columns."""

    def __init__(self, points: int) -> None:
        import faiss

        self._faiss = faiss
        ks = np.arange(points)
        self.dataset = ks % len(DATASETS)
        self.label = label_of(ks, self.dataset)
        self._cache: dict[SearchFilter, tuple[Any, np.ndarray]] = {}

    def selector(self, flt: SearchFilter) -> Any:
        if flt not in self._cache:
            d = DATASETS.index(flt.dataset or "")
            wanted = [LABELS[flt.dataset or ""].index(x) for x in flt.labels]
            mask = (self.dataset == d) & np.isin(self.label, wanted)
            bits = np.packbits(mask, bitorder="little")
            selector = self._faiss.IDSelectorBitmap(len(mask), self._faiss.swig_ptr(bits))
            self._cache[flt] = (selector, bits)  # the bitmap must outlive the selector
        return self._cache[flt][0]


def run_faiss(points: int, s: Scale, picks: list[int], queries: np.ndarray, hnsw: bool) -> dict[str, Any]:
    """FAISS over the queried vector only (it stores one vector per index, and no payload)."""
    import faiss

    data = vectors(0, 0, points, s.dim, s.seed)
    started = time.perf_counter()
    index: Any
    if hnsw:
        index = faiss.IndexHNSWFlat(s.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF
    else:
        index = faiss.IndexFlatIP(s.dim)
    index.add(data)
    build = time.perf_counter() - started
    del data
    masks = FaissMasks(points)

    def search(i: int, filtered: bool) -> list[str]:
        kwargs: dict[str, Any] = {}
        if hnsw or filtered:
            params: Any = getattr(faiss, "SearchParametersHNSW" if hnsw else "SearchParameters")()
            if hnsw:
                params.efSearch = HNSW_EF
            if filtered:
                params.sel = masks.selector(query_filter(picks[i]))
            kwargs["params"] = params
        _, found = index.search(queries[i][None, :], 10, **kwargs)
        return [point_id(int(i)) for i in found[0] if i >= 0]

    got = measure(search, len(picks))
    size = len(faiss.serialize_index(index)) / MIB
    return {
        "build_s": round(build, 2),
        "latency": got.summaries,
        "memory_mib_per_million": per_million(size, points),
        "_ids": got.ids,
    }


# -- one size, all backends ------------------------------------------------------------------------


def run_size(points: int, s: Scale) -> dict[str, Any]:
    rng = np.random.default_rng(s.seed)
    picks = sorted(int(k) for k in rng.choice(points, size=min(s.queries, points), replace=False))
    queries = vectors_at(picks, s.dim, s.seed)
    names = VECTORS if points <= s.all_vectors_max else (QUERIED,)
    row: dict[str, Any] = {"points": points, "dim": s.dim, "named_vectors": len(names)}
    with _home() as home:
        edge = run_edge(home, points, s, picks, queries, names)
        truth = edge.pop("_truth")
        row.update(edge)
        row["grpc"] = run_grpc(home, s, picks, queries, names)
    row["faiss_flat"] = run_faiss(points, s, picks, queries, hnsw=False)
    if points <= s.hnsw_max:
        row["faiss_hnsw"] = run_faiss(points, s, picks, queries, hnsw=True)
    if points <= s.local_max:
        row["qdrant_local"] = run_local(points, s, picks, queries)
    _recalls(row, truth)
    _ratios(row)
    return row


def _recalls(row: dict[str, Any], truth: dict[str, list[list[Any]]]) -> None:
    """Recall@10 of each backend against an exact answer (edge exact; FAISS HNSW vs FAISS flat)."""
    flat = row["faiss_flat"].get("_ids")
    for name in ("grpc", "qdrant_local", "faiss_flat", "faiss_hnsw"):
        if name not in row:
            continue
        ids = row[name].pop("_ids")
        exact = flat if name == "faiss_hnsw" else truth
        row[name]["recall_at_10"] = {k: recall_at(ids[k], exact[k][: len(ids[k])]) for k in ids}
    row["faiss_flat"].pop("_ids", None)


def _ratios(row: dict[str, Any]) -> None:
    """p50 of each backend over the embedded store's, filtered and not: same run, same queries."""
    edge = row["edge"]["latency"]
    for name in BACKENDS[1:]:
        if name in row:
            latency = row[name]["latency"]
            row[name]["p50_ratio_to_edge"] = {
                k: ratio(latency[k]["p50_ms"], edge[k]["p50_ms"], 2) for k in latency
            }


@contextlib.contextmanager
def _home() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="histo-bench-search-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    s = scale_for(quick)
    results = []
    for points in s.sizes:
        started = time.perf_counter()
        row = run_size(points, s)
        row["seconds"] = round(time.perf_counter() - started, 1)
        results.append(row)
        print(f"  search: {points:,} points done in {row['seconds']} s", flush=True)
    return {
        "query": "a stored tile's simclr vector, top 10, one caller; filtered: its dataset and 2 labels",
        "vectors": f"{len(VECTORS)} named vectors per point up to {s.all_vectors_max:,} points, then the "
        "queried one only; synthetic unit vectors around 200 centres",
        "hnsw": {"m": HNSW_M, "ef_construct": HNSW_EF, "ef": HNSW_EF, "max_points": s.hnsw_max},
        "qdrant_local_max_points": s.local_max,
        "results": results,
    }


def rows(report: dict[str, Any]) -> list[Row]:
    out = []
    for size in report["results"]:
        edge = size["edge"]["latency"]["filtered"]["p50_ms"]
        for name in BACKENDS:
            if name not in size:
                continue
            lat, recall = size[name]["latency"], size[name].get("recall_at_10", {})
            ratios = size[name].get("p50_ratio_to_edge", {"filtered": 1.0})
            out.append(
                Row(
                    f"{size['points']:,} pts, {name}: filtered p50 / p99 ms (recall@10); unfiltered p50",
                    f"{lat['filtered']['p50_ms']:.2f} / {lat['filtered']['p99_ms']:.2f} "
                    f"({recall.get('filtered', '')}); {lat['unfiltered']['p50_ms']:.2f}",
                    f"edge {edge:.2f}",
                    f"{ratios['filtered']:.2f}",
                )
            )
    return out
