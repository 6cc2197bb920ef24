"""A small HISTO_HOME for the snapshot and migration tests: an embedded index of seeded unit
vectors under two encoders (``colorhist``, whose baseline artifact is in ``encoders/``, and
``other``, which has none), two data sets with recorded roots, and helpers that compare indexes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from histo.encoders.baselines import make_baseline_artifact
from histo.store import Point, SearchFilter, VectorStore, open_store

DIMS = {"colorhist": 512, "other": 16}
NS = uuid.UUID("0f6f3c1e-5d7b-4f43-9a56-21c1d3a3e0b7")


def point(k: int, rng: np.random.Generator) -> Point:
    dataset = "bach" if k % 3 else "bracs"
    vectors = {name: rng.standard_normal(dim) for name, dim in DIMS.items()}
    if k % 7 == 0:
        del vectors["other"]  # not every point has every encoder
    payload = {
        "dataset": dataset,
        "label": ("a", "b", "c")[k % 3 if dataset == "bach" else k % 2],
        "split": ("train", "test")[k % 2],
        "image_id": f"{dataset}/img{k // 4}",
        "path": f"img{k // 4}.png",
        "root": f"/data/{dataset}" if k % 11 else f"/old/{dataset}",
        "x": k,
        "score": k / 7,
    }
    return Point(str(uuid.uuid5(NS, f"tile-{k}")), vectors, payload)


def build_home(home: Path, points: int = 400, seed: int = 0) -> Path:
    """The colorhist artifact under ``home/encoders`` and ``points`` points in ``home/index``."""
    make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=64)
    rng = np.random.default_rng(seed)
    with open_store(path=home / "index") as store:
        store.ensure_vectors(DIMS)
        store.upsert(point(k, rng) for k in range(points))
        store.optimize()
    return home


def queries(seed: int = 1) -> list[tuple[str, list[float], SearchFilter | None]]:
    rng = np.random.default_rng(seed)
    return [
        (name, rng.standard_normal(dim).tolist(), flt)
        for name, dim in DIMS.items()
        for flt in (None, SearchFilter(dataset="bach", labels=("a", "b")))
    ]


def hits(store: VectorStore, exact: bool = False) -> list[list[tuple[str, float]]]:
    """Ids and scores of a fixed set of searches (both encoders, with and without a filter)."""
    return [
        [(h.id, h.score) for h in store.search(name, vector, 10, flt, exact=exact)]
        for name, vector, flt in queries()
    ]


def points_of(store: VectorStore) -> dict[str, tuple[dict[str, Any], dict[str, bytes]]]:
    """Every point: payload and each vector's float32 bytes (for bit-for-bit comparisons)."""
    return {
        r.id: (r.payload, {n: np.asarray(v, dtype=np.float32).tobytes() for n, v in r.vectors.items()})
        for r in store.scroll(with_vectors=True)
    }
