"""Slide search on the real embedded engine: mosaics chosen by k-means, and the ranking rule
(median over query tiles of each slide's best mosaic similarity) on hand-made vectors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from histo.slide_search import build_mosaics, mosaic_size, rank_slides, select_mosaic
from histo.store import EdgeStore, Point, SearchFilter


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    with EdgeStore(tmp_path / "index") as s:
        s.ensure_vectors({"v": 2})
        yield s


def point(slide: str, vector: tuple[float, float], mosaic: bool, **extra: str) -> Point:
    payload = {"dataset": "d", "slide_id": slide, "label": slide.upper(), **extra}
    if mosaic:
        payload["role"] = "mosaic"
    return Point(str(uuid.uuid4()), {"v": list(vector)}, payload)


def test_mosaic_size_is_a_tenth_clamped() -> None:
    assert [mosaic_size(n) for n in (5, 16, 100, 400, 10_000)] == [5, 16, 16, 40, 64]


def test_the_mosaic_covers_every_cluster_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:, :4]
    vectors = np.concatenate([c + 0.01 * rng.standard_normal((30, 4)) for c in centres])
    chosen = select_mosaic(vectors, 4, seed=0)
    assert sorted(i // 30 for i in chosen) == [0, 1, 2, 3] and chosen == select_mosaic(vectors, 4, seed=0)


def test_build_mosaics_marks_and_re_marks_payloads(store: EdgeStore) -> None:
    rng = np.random.default_rng(1)
    store.upsert(point("s1", tuple(rng.standard_normal(2)), False, x="1") for _ in range(40))
    assert build_mosaics(store, "v", "d", ["s1"]) == {"s1": 16}
    marked = list(store.scroll(SearchFilter(mosaic_only=True)))
    assert len(marked) == 16 and all(
        r.payload["mosaic_encoder"] == "v" and r.payload["x"] == "1" for r in marked
    )
    assert build_mosaics(store, "v", "d", ["s1"]) == {"s1": 16}
    assert store.count(SearchFilter(mosaic_only=True)) == 16  # the old marks were replaced, not added
    store.ensure_vectors({"w": 2})
    store.upsert(Point(r.id, {"w": list(rng.standard_normal(2))}) for r in store.scroll())
    build_mosaics(store, "w", "d", ["s1"])  # a later ingestion with another encoder keeps "v"
    assert {r.payload["mosaic_encoder"] for r in store.scroll(SearchFilter(mosaic_only=True))} == {"v"}
    build_mosaics(store, "w", "d", ["s1"], keep_encoder=False)  # histocli index mosaics -e w
    assert {r.payload["mosaic_encoder"] for r in store.scroll(SearchFilter(mosaic_only=True))} == {"w"}


def test_slides_rank_by_the_median_of_their_best_match_per_query_tile(store: EdgeStore) -> None:
    store.upsert(
        [
            point("a", (1.0, 0.0), True),
            point("a", (0.6, 0.8), True),
            point("b", (0.0, 1.0), True),
            point("c", (1.0, 0.0), False),  # not in a mosaic: never searched
        ]
    )
    ranked = rank_slides(store, "v", [[1.0, 0.0], [0.0, 1.0]], SearchFilter(), top_k=10, exact=True)
    # a: best 1.0 for the first query tile, 0.8 for the second -> median 0.9; b: 0.0 and 1.0 -> 0.5
    assert [(s.slide_id, round(s.score, 4)) for s in ranked] == [("a", 0.9), ("b", 0.5)]
    assert [(round(t.score, 4), t.query_tile) for t in ranked[0].tiles] == [(1.0, 0), (0.8, 1)]
    assert ranked[0].label == "A" and ranked[0].dataset == "d"
    only_b = rank_slides(
        store, "v", [[1.0, 0.0]], SearchFilter(exclude_slide_ids=("a",)), top_k=10, exact=True
    )
    assert [s.slide_id for s in only_b] == ["b"]
