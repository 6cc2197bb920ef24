"""Vector quantization: recall, latency, memory and disk of each ``IndexOptions.quantization``.

The archive of ``benchmarks.search_scale`` (four named 512-d vectors per tile, clustered synthetic
embeddings, the payload ingestion writes), built once per layout in the embedded store and
searched with a stored tile's ``simclr`` vector, top 10, one caller, unfiltered and filtered to
its dataset and two labels:

* **100k tiles, every layout**: ``none`` (float vectors in RAM), ``int8`` scalar, ``turbo4``
  (TurboQuant, 4 bits) and ``binary``, each rescoring ``oversampling`` x 10 candidates with the
  float vectors kept on disk; plus ``int8`` with per-value graph links (``payload_m``). Recall@10
  against the same index's exact search; p50/p99; build (upsert + HNSW) time; resident memory
  after a cold reopen and the queries; disk. FAISS HNSW (``IndexHNSWFlat``, the same graph
  parameters; filters as precomputed bitmaps) on the same queries is the baseline of the
  filtered p50 ratio, its recall against FAISS flat.
* **1M tiles, the default layout**: build time, memory and disk, and the filtered p50/p99 through
  the gRPC service (``python -m services.search`` on loopback).
* **Centring for binary quantization**: ResNet features are non-negative (ReLU, then average
  pooling), so every sign bit of every vector is 1 and binary codes cannot tell tiles apart.
  Subtracting the data set's mean vector first makes the bits informative, but changes the
  cosine neighbourhoods themselves; both are measured on 100k non-negative vectors.
"""

from __future__ import annotations

import gc
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Row, ratio, recall_at
from benchmarks.search_scale import (
    QUERIED,
    VECTORS,
    Scale,
    _home,
    run_edge,
    run_faiss,
    run_grpc,
    vectors,
    vectors_at,
)
from histo.store import EdgeStore, Point
from histo.store.base import DEFAULT_QUANTIZATION, IndexOptions

NAME = "quantization"
#: label -> the layout measured at the smaller size.
LAYOUTS: dict[str, IndexOptions] = {
    "none": IndexOptions("none"),
    "int8": IndexOptions("int8"),
    "turbo4": IndexOptions("turbo4"),
    "binary": IndexOptions("binary"),
    "int8_payload_m16": IndexOptions("int8", payload_m=16),
}
DEFAULT_LABEL = DEFAULT_QUANTIZATION


@dataclass(frozen=True)
class Sizes:
    small: int
    small_queries: int
    big: int | None
    big_queries: int
    big_vectors: int
    centring: int
    seed: int = 0

    def scale(self, points: int, queries: int) -> Scale:
        """``search_scale``'s settings for one size: HNSW always built."""
        return Scale([points], 512, queries, 0, hnsw_max=points, local_max=0, all_vectors_max=points)


def sizes_for(quick: bool) -> Sizes:
    if quick:
        return Sizes(small=3000, small_queries=30, big=None, big_queries=0, big_vectors=1, centring=3000)
    return Sizes(
        small=100_000, small_queries=200, big=1_000_000, big_queries=100, big_vectors=1, centring=100_000
    )


def _picks(points: int, count: int, seed: int) -> tuple[list[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    picks = sorted(int(k) for k in rng.choice(points, size=min(count, points), replace=False))
    return picks, vectors_at(picks, 512, seed)


# -- every layout at the smaller size ---------------------------------------------------------------


def run_layouts(z: Sizes) -> dict[str, Any]:
    s = z.scale(z.small, z.small_queries)
    picks, queries = _picks(z.small, z.small_queries, z.seed)
    out: dict[str, Any] = {"points": z.small, "named_vectors": len(VECTORS)}
    for label, options in LAYOUTS.items():
        with _home() as home:
            started = time.perf_counter()
            got = run_edge(home, z.small, s, picks, queries, VECTORS, options)
            got.pop("_truth")
            row = got["edge"]
            row["exact_latency"] = got["edge_exact"]["latency"]
            row["seconds"] = round(time.perf_counter() - started, 1)
            out[label] = row
        print(f"  quantization: {label} at {z.small:,} done in {row['seconds']} s", flush=True)
    out["faiss_hnsw"] = run_faiss(z.small, s, picks, queries, hnsw=True)
    flat = run_faiss(z.small, s, picks, queries, hnsw=False)
    ids = out["faiss_hnsw"].pop("_ids")
    out["faiss_hnsw"]["recall_at_10"] = {k: recall_at(ids[k], flat["_ids"][k]) for k in ids}
    faiss_p50 = out["faiss_hnsw"]["latency"]["filtered"]["p50_ms"]
    for label in LAYOUTS:
        out[label]["filtered_p50_ratio_to_faiss_hnsw"] = ratio(
            out[label]["latency"]["filtered"]["p50_ms"], faiss_p50, 2
        )
    return out


# -- the default layout at a million tiles ----------------------------------------------------------


def run_big(z: Sizes) -> dict[str, Any] | None:
    if z.big is None:
        return None
    s = z.scale(z.big, z.big_queries)
    picks, queries = _picks(z.big, z.big_queries, z.seed)
    names = VECTORS[: z.big_vectors]
    with _home() as home:
        started = time.perf_counter()
        got = run_edge(home, z.big, s, picks, queries, names, LAYOUTS[DEFAULT_LABEL])
        truth = got.pop("_truth")
        row: dict[str, Any] = {"points": z.big, "named_vectors": len(names), "layout": DEFAULT_LABEL}
        row["edge"] = got["edge"]
        row["exact_latency"] = got["edge_exact"]["latency"]
        grpc = run_grpc(home, s, picks, queries, names)
        ids = grpc.pop("_ids")
        grpc["recall_at_10"] = {k: recall_at(ids[k], truth[k]) for k in ids}
        row["grpc"] = grpc
        row["seconds"] = round(time.perf_counter() - started, 1)
    print(f"  quantization: {z.big:,} points done in {row['seconds']} s", flush=True)
    return row


# -- centring non-negative features for binary codes ------------------------------------------------


#: Two kinds of non-negative features: a ReLU's output (clipped at zero: about a third of the
#: dimensions are 0) and pooled ReLU features (averaged over positions: every dimension > 0).
NON_NEGATIVE = ("clipped", "pooled")


def non_negative(kind: str, points: int, seed: int) -> np.ndarray:
    """Unit vectors made non-negative from the archive's vectors, then normalised."""
    base = vectors(0, 0, points, 512, seed)
    out = np.maximum(base + 0.02, 0.0) if kind == "clipped" else np.abs(base) + 0.01
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _binary_recall(home: Path, data: np.ndarray, picks: list[int]) -> tuple[float, list[list[str]]]:
    """Recall@10 of a binary-quantized index of ``data`` against its own exact search."""
    ids = [str(uuid.UUID(int=k + 1)) for k in range(len(data))]
    with EdgeStore(home / "index", options=IndexOptions("binary")) as store:
        store.ensure_vectors({QUERIED: data.shape[1]})
        for lo in range(0, len(data), 1000):
            store.upsert(Point(ids[k], {QUERIED: data[k]}) for k in range(lo, min(len(data), lo + 1000)))
        store.optimize()

        def search(i: int, exact: bool) -> list[str]:
            return [h.id for h in store.search(QUERIED, data[picks[i]], 10, exact=exact)]

        approx = [search(i, False) for i in range(len(picks))]
        exact = [search(i, True) for i in range(len(picks))]
    return recall_at(approx, exact), exact


def run_centring(z: Sizes) -> dict[str, Any]:
    picks, _ = _picks(z.centring, z.small_queries, z.seed)
    out: dict[str, Any] = {"points": z.centring}
    for kind in NON_NEGATIVE:
        raw = non_negative(kind, z.centring, z.seed)
        centred = raw - raw.mean(axis=0)
        centred /= np.linalg.norm(centred, axis=1, keepdims=True)
        with _home() as home:
            raw_recall, raw_truth = _binary_recall(home, raw, picks)
        with _home() as home:
            centred_recall, centred_truth = _binary_recall(home, centred, picks)
        out[kind] = {
            "positive_share_of_dimensions": round(float((raw > 0).mean()), 3),
            "binary_recall_at_10_raw": raw_recall,
            "binary_recall_at_10_centred": centred_recall,
            "exact_top10_overlap_centred_vs_raw": recall_at(centred_truth, raw_truth),
        }
    return out


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    z = sizes_for(quick)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "query": "a stored tile's simclr vector, top 10, one caller; filtered: its dataset and 2 labels",
        "layouts": {
            k: {"quantization": v.quantization, "oversampling": v.oversampling, "payload_m": v.payload_m}
            for k, v in LAYOUTS.items()
        },
        "default": DEFAULT_LABEL,
        "small": run_layouts(z),
    }
    gc.collect()
    report["centring"] = run_centring(z)
    gc.collect()
    report["big"] = run_big(z)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def rows(report: dict[str, Any]) -> list[Row]:
    small = report["small"]
    faiss = small["faiss_hnsw"]["latency"]["filtered"]["p50_ms"]
    out = []
    for label in LAYOUTS:
        row = small[label]
        lat, recall = row["latency"], row["recall_at_10"]
        out.append(
            Row(
                f"{small['points']:,} pts, {label}: filtered p50/p99 ms (recall@10); "
                "unfiltered p50 (recall); MiB RAM / disk per 1M",
                f"{lat['filtered']['p50_ms']:.2f}/{lat['filtered']['p99_ms']:.2f} ({recall['filtered']}); "
                f"{lat['unfiltered']['p50_ms']:.2f} ({recall['unfiltered']}); "
                f"{row['memory_mib_per_million']:.0f} / {row['disk_mib_per_million']:.0f}",
                f"FAISS HNSW {faiss:.2f}",
                f"{row['filtered_p50_ratio_to_faiss_hnsw']:.2f}",
            )
        )
    for kind in NON_NEGATIVE:
        c = report["centring"][kind]
        out.append(
            Row(
                f"binary recall@10, {kind} non-negative vectors: centred (raw); "
                "exact top-10 overlap centred vs raw",
                f"{c['binary_recall_at_10_centred']} ({c['binary_recall_at_10_raw']}); "
                f"{c['exact_top10_overlap_centred_vs_raw']}",
            )
        )
    big = report.get("big")
    if big:
        grpc, edge = big["grpc"], big["edge"]
        grpc_p50, edge_p50 = grpc["latency"]["filtered"]["p50_ms"], edge["latency"]["filtered"]["p50_ms"]
        out.append(
            Row(
                f"{big['points']:,} pts x {big['named_vectors']} vectors, {big['layout']}: "
                "gRPC filtered p50/p99 ms (recall@10); build s; RAM / disk MiB",
                f"{grpc['latency']['filtered']['p50_ms']:.2f}/{grpc['latency']['filtered']['p99_ms']:.2f} "
                f"({grpc['recall_at_10']['filtered']}); {edge['build_s'] + edge.get('optimize_s', 0):.0f}; "
                f"{edge['memory_mib']:.0f} / {edge['disk_mib']:.0f}",
                f"in-process {edge_p50:.2f}",
                f"{ratio(grpc_p50, edge_p50, 2):.2f}",
            )
        )
    return out
