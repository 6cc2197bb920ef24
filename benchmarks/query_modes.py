"""Query modes: what fusion, recommendation, MMR and filters cost over one encoder's nearest search.

One embedded ``EdgeStore`` (HNSW built by ``optimize()``) holds ``points`` tiles with three named
cosine vectors of different widths (128, 256, 512: stand-ins for three encoders) and a ``dataset``
/ ``label`` payload. Vectors are synthetic unit vectors around shared cluster centres (every
encoder sees the same clusters, each through its own random centres), so neighbour lists have the
structure of embeddings rather than of uniform noise. A ``--quick`` index (2k points) is under the
engine's indexing threshold and is searched by full scan: a smoke run, not figures. Each of
``queries`` seeded stored points asks, top 10, through ``StoreBase.query``:

* **nearest**: ``store.search`` on the 512-d vector, the baseline of every unfiltered row;
* **fused**: 2 encoders (512 + 256) by RRF, all 3 by RRF and all 3 by DBSF (prefetch + fusion in
  the engine, plus each leg's own list to say which encoders found each hit);
* **recommend**: 3 positive and 2 negative examples (the stored vectors of random points) by
  ``best_score`` (in the engine) and ``average_vector`` (one nearest query on the combined vector);
* **MMR**: diversity 0.5 over the nearest ``mmr_candidates(10)``;
* **filtered**: nearest, fused 2 RRF and recommend best_score restricted to the query point's own
  dataset and label; each compared with the filtered nearest search.

Every mode runs on the same queries, interleaved query by query in a rotating order, so a busy
machine slows all rows alike. Reported per row: median, p95 and mean milliseconds per call, and the
median's ratio to its baseline's median. ``ServerStore.in_memory()`` is left out on purpose: that
mode is qdrant-client's numpy brute force, not the engine these queries run in.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.common import Row, ratio
from histo.store import EdgeStore, Hit, Point, SearchFilter
from histo.store.base import FUSION_DEPTH, Leg, mmr_candidates

NAME = "query_modes"
ENCODERS = {"enc_512": 512, "enc_256": 256, "enc_128": 128}
MAIN, PAIR = "enc_512", ("enc_512", "enc_256")
LABELS = {
    "bracs": ("N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC"),
    "bach": ("Normal", "Benign", "InSitu", "Invasive"),
    "crc": ("normal", "low_grade", "high_grade"),
}
DATASETS = tuple(LABELS)
CLUSTERS, SPREAD = 200, 0.7  # as benchmarks.search_scale: 200 centres, noise 0.7 per dimension
TOP_K, POSITIVES, NEGATIVES, DIVERSITY = 10, 3, 2, 0.5
NS = uuid.UUID("5f0c8a1e-2b7d-4c55-9a61-0d3e4b7c9f12")


@dataclass(frozen=True)
class Scale:
    points: int
    queries: int
    seed: int = 0
    warmup: int = 3


def scale_for(quick: bool, points: int | None = None, queries: int | None = None, seed: int = 0) -> Scale:
    """Quick: a smoke run in test time (HNSW on 2k points builds in seconds); full: 20k points."""
    default = Scale(2_000, 40, seed) if quick else Scale(20_000, 200, seed)
    return Scale(points or default.points, queries or default.queries, seed)


# -- the synthetic archive --------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """Every point's cluster and vectors (kept: queries and examples are stored vectors)."""

    clusters: np.ndarray
    vectors: dict[str, np.ndarray]


def make_archive(points: int, seed: int) -> Archive:
    """Shared clusters, seen by each encoder through its own centres and noise."""
    clusters = np.random.default_rng([seed, 0]).integers(0, CLUSTERS, points)
    vectors = {}
    for index, (name, dim) in enumerate(ENCODERS.items(), start=1):
        rng = np.random.default_rng([seed, index])
        centres = rng.standard_normal((CLUSTERS, dim), np.float32)
        rows = centres[clusters] + SPREAD * rng.standard_normal((points, dim), np.float32)
        vectors[name] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return Archive(clusters, vectors)


def payload(k: int, cluster: int) -> dict[str, str]:
    """Datasets in turn; the label follows the cluster, as a tissue class would."""
    dataset = DATASETS[k % len(DATASETS)]
    labels = LABELS[dataset]
    return {"dataset": dataset, "label": labels[cluster % len(labels)]}


def point_id(k: int) -> str:
    return str(uuid.uuid5(NS, str(k)))


def fill(store: EdgeStore, archive: Archive) -> float:
    """Upsert every point with its three vectors and payload; seconds taken."""
    started = time.perf_counter()
    store.ensure_vectors(ENCODERS)
    points = len(archive.clusters)
    for lo in range(0, points, 1000):
        store.upsert(
            Point(
                point_id(k),
                {name: rows[k] for name, rows in archive.vectors.items()},
                payload(k, int(archive.clusters[k])),
            )
            for k in range(lo, min(points, lo + 1000))
        )
    return time.perf_counter() - started


# -- the queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queries:
    """Per query: the stored point asked with, its example points and its own dataset + label."""

    picks: list[int]
    positives: list[list[int]]
    negatives: list[list[int]]
    filters: list[SearchFilter]


def make_queries(archive: Archive, s: Scale) -> Queries:
    rng = np.random.default_rng([s.seed, 99])
    points = len(archive.clusters)
    picks = [int(k) for k in rng.choice(points, size=min(s.queries, points), replace=False)]
    examples = [rng.choice(points, size=POSITIVES + NEGATIVES, replace=False) for _ in picks]
    filters = []
    for k in picks:
        own = payload(k, int(archive.clusters[k]))
        filters.append(SearchFilter(dataset=own["dataset"], labels=(own["label"],)))
    return Queries(
        picks,
        [[int(j) for j in e[:POSITIVES]] for e in examples],
        [[int(j) for j in e[POSITIVES:]] for e in examples],
        filters,
    )


@dataclass(frozen=True)
class Mode:
    """One row: what it asks, the row it is compared with, and the call for query ``i``."""

    key: str
    what: str
    baseline: str
    call: Callable[[int], list[Hit]]


def modes(store: EdgeStore, archive: Archive, q: Queries) -> list[Mode]:
    """Every row of the table: the unfiltered modes, then the filtered ones."""
    vec, every = archive.vectors, tuple(ENCODERS)

    def legs(names: Sequence[str], i: int) -> list[Leg]:
        return [Leg(name, vec[name][q.picks[i]]) for name in names]

    def recommend(i: int, strategy: str) -> list[Leg]:
        positives = tuple(vec[MAIN][j] for j in q.positives[i])
        negatives = tuple(vec[MAIN][j] for j in q.negatives[i])
        return [Leg(MAIN, positives=positives, negatives=negatives, strategy=strategy)]

    def filterable(filtered: bool) -> list[Mode]:
        """Nearest (the baseline), fused 2 RRF and recommend best_score, filtered or not."""
        tag, suffix = (" filtered", "_filtered") if filtered else ("", "")
        base = f"nearest{suffix}"

        def flt(i: int) -> SearchFilter | None:
            return q.filters[i] if filtered else None

        return [
            Mode(
                base,
                f"nearest {MAIN}{tag}",
                base,
                lambda i: store.search(MAIN, vec[MAIN][q.picks[i]], TOP_K, flt(i)),
            ),
            Mode(
                f"fused2_rrf{suffix}",
                f"fused 2 encoders RRF{tag}",
                base,
                lambda i: store.query(legs(PAIR, i), TOP_K, flt(i), fusion="rrf"),
            ),
            Mode(
                f"recommend_best_score{suffix}",
                f"recommend best_score {POSITIVES}+/{NEGATIVES}-{tag}",
                base,
                lambda i: store.query(recommend(i, "best_score"), TOP_K, flt(i)),
            ),
        ]

    nearest, fused2, best = filterable(False)
    others = [
        Mode("fused3_rrf", "fused 3 encoders RRF", "nearest", lambda i: store.query(legs(every, i), TOP_K)),
        Mode(
            "fused3_dbsf",
            "fused 3 encoders DBSF",
            "nearest",
            lambda i: store.query(legs(every, i), TOP_K, fusion="dbsf"),
        ),
    ]
    after = [
        Mode(
            "recommend_average_vector",
            f"recommend average_vector {POSITIVES}+/{NEGATIVES}-",
            "nearest",
            lambda i: store.query(recommend(i, "average_vector"), TOP_K),
        ),
        Mode(
            "mmr",
            f"MMR diversity {DIVERSITY}",
            "nearest",
            lambda i: store.query([Leg(MAIN, vec[MAIN][q.picks[i]], diversity=DIVERSITY)], TOP_K),
        ),
    ]
    return [nearest, fused2, *others, best, *after, *filterable(True)]


# -- the measurement -------------------------------------------------------------------------------


def measure(
    all_modes: list[Mode], count: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Milliseconds per call of every mode, query by query in a rotating order (so no mode always
    follows the one that warmed its caches), after ``warmup`` untimed queries; and the mean number
    of hits each mode returned (a filter that emptied the results would show here)."""
    for i in range(min(warmup, count)):
        for mode in all_modes:
            mode.call(i)
    times: dict[str, list[float]] = {m.key: [] for m in all_modes}
    hits: dict[str, list[int]] = {m.key: [] for m in all_modes}
    for i in tqdm(range(count), desc=NAME, unit="query", disable=None, mininterval=2.0):
        shift = i % len(all_modes)
        for mode in all_modes[shift:] + all_modes[:shift]:
            started = time.perf_counter()
            found = mode.call(i)
            times[mode.key].append((time.perf_counter() - started) * 1000.0)
            hits[mode.key].append(len(found))
    return times, {key: round(float(np.mean(n)), 2) for key, n in hits.items()}


def figures(all_modes: list[Mode], times: dict[str, list[float]], hits: dict[str, float]) -> dict[str, Any]:
    """Median / p95 / mean ms per row and the median's ratio to its baseline's median."""
    medians = {key: float(np.median(ms)) for key, ms in times.items()}
    out = {}
    for mode in all_modes:
        ms = np.asarray(times[mode.key])
        out[mode.key] = {
            "what": mode.what,
            "baseline": mode.baseline,
            "median_ms": round(medians[mode.key], 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "mean_hits": hits[mode.key],
            "ratio": ratio(medians[mode.key], medians[mode.baseline], 2),
        }
    return out


def index_state(folder: Path) -> dict[str, Any]:
    """Per vector, the HNSW graphs ``optimize()`` built (the engine skips segments under its
    indexing threshold, so a quick run searches by full scan) and their full-scan thresholds."""
    state: dict[str, Any] = {
        name: {"hnsw_points": 0, "full_scan_threshold_points": None} for name in ENCODERS
    }
    for config in sorted(folder.rglob("vector_index-*/hnsw_config.json")):
        name = config.parent.name.removeprefix("vector_index-")
        if name in state:
            found = json.loads(config.read_text())
            state[name]["hnsw_points"] += int(found.get("indexed_vector_count", 0))
            state[name]["full_scan_threshold_points"] = found.get("full_scan_threshold")
    return state


def pass_share(store: EdgeStore, q: Queries, points: int) -> float:
    """Mean share of the points that a query's filter keeps."""
    counts = {f: store.count(f) for f in set(q.filters)}
    return round(float(np.mean([counts[f] for f in q.filters])) / points, 4)


@contextlib.contextmanager
def _home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="histo-bench-query-modes-") as folder:
        yield Path(folder)


def run(
    quick: bool = False,
    device: str = "cpu",
    *,
    points: int | None = None,
    queries: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the index, time every mode over the same queries; ``device`` is unused (CPU engine)."""
    s = scale_for(quick, points, queries, seed)
    load_start = [round(x, 2) for x in os.getloadavg()]
    archive = make_archive(s.points, s.seed)
    q = make_queries(archive, s)
    with _home() as home, EdgeStore(home / "index") as store:
        build_s = fill(store, archive)
        started = time.perf_counter()
        store.optimize()
        optimize_s = time.perf_counter() - started
        all_modes = modes(store, archive, q)
        times, hits = measure(all_modes, len(q.picks), s.warmup)
        share = pass_share(store, q, s.points)
        hnsw = index_state(home / "index")
    print(f"  {NAME}: {s.points:,} points, {len(q.picks)} queries x {len(all_modes)} modes done", flush=True)
    return {
        "points": s.points,
        "queries": len(q.picks),
        "seed": s.seed,
        "top_k": TOP_K,
        "dims": ENCODERS,
        "index": "EdgeStore (embedded qdrant-edge) after optimize(); cosine",
        "hnsw": hnsw,
        "vectors": f"synthetic unit vectors around {CLUSTERS} clusters all encoders share, noise {SPREAD}",
        "build_s": round(build_s, 2),
        "optimize_s": round(optimize_s, 2),
        "fusion_depth": FUSION_DEPTH,
        "mmr_candidates": mmr_candidates(TOP_K),
        "examples": f"{POSITIVES} positives + {NEGATIVES} negatives: stored {MAIN} vectors of random points",
        "filter": "the query point's own dataset and label",
        "filter_pass_share": share,
        "order": "every mode on every query, interleaved query by query in a rotating order",
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rows": figures(all_modes, times, hits),
    }


def rows(report: dict[str, Any]) -> list[Row]:
    """The runner's table: median / p95 ms of each mode against its baseline's median."""
    table = report["rows"]
    return [
        Row(
            f"{row['what']}: median / p95 ms",
            f"{row['median_ms']:.2f} / {row['p95_ms']:.2f}",
            f"{row['baseline']} {table[row['baseline']]['median_ms']:.2f}",
            f"{row['ratio']:.2f}",
        )
        for row in table.values()
    ]
