"""The evaluation protocol: exclusion rules, sampling, and a report written from a small index."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from histo.evaluation import IndexedTiles, evaluate, evaluate_encoder, pick_queries, rank
from histo.report import write_report
from histo.store import EdgeStore, Point


def _tiles(vectors: list[list[float]], payloads: list[dict]) -> IndexedTiles:
    matrix = np.asarray(vectors, dtype=np.float32)
    return IndexedTiles(
        [str(i) for i in range(len(vectors))],
        matrix / np.linalg.norm(matrix, axis=1, keepdims=True),
        payloads,
    )


def test_own_image_and_slide_are_excluded() -> None:
    payloads = [
        {"label": "a", "image_id": "i1", "slide_id": "s1"},
        {"label": "a", "image_id": "i1", "slide_id": "s1"},  # same image as the query
        {"label": "a", "image_id": "i2", "slide_id": "s1"},  # same slide
        {"label": "b", "image_id": "i3", "slide_id": "s2"},
        {"label": "a", "image_id": "i4"},  # no slide recorded: never excluded by slide
    ]
    tiles = _tiles([[1, 0], [1, 0.01], [1, 0.02], [1, 0.5], [0.2, 1]], payloads)
    idx, sims = rank(tiles, np.array([0]), depth=4)
    assert idx[0].tolist() == [3, 4, -1, -1]
    assert np.isneginf(sims[0, 2:]).all()


def test_k_larger_than_candidates_and_sampling() -> None:
    tiles = _tiles([[1, 0], [0, 1], [1, 1]], [{"label": "a", "image_id": str(i)} for i in range(3)])
    result = evaluate_encoder(tiles, [1, 10], max_queries=None)
    assert result.summary["overall"]["P@10"] == 1.0 and result.summary["queries"] == 3
    assert pick_queries(10, 4, seed=1).tolist() == pick_queries(10, 4, seed=1).tolist()
    assert len(pick_queries(10, 4, seed=1)) == 4 and len(pick_queries(3, 4, seed=1)) == 3


def test_evaluate_index_and_write_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = {"a": rng.normal(size=8), "b": rng.normal(size=8), "c": rng.normal(size=8)}
    points = []
    for slide in range(6):
        for label, centre in centres.items():
            for _tile in range(3):
                payload = {
                    "dataset": "bach",
                    "label": label,
                    "image_id": f"{label}{slide}",
                    "slide_id": f"s{slide}",
                    "path": "x.png",
                    "x": 0,
                    "y": 0,
                    "w": 8,
                    "h": 8,
                }
                good = centre + 0.3 * rng.normal(size=8)
                noise = rng.normal(size=8)
                points.append(Point(str(uuid.uuid4()), {"good": good, "noise": noise}, payload))
    with EdgeStore(tmp_path / "index") as store:
        store.ensure_vectors({"good": 8, "noise": 8})
        store.upsert(points)
        results = evaluate(store, "bach", ks=[1, 5], progress=False)
    assert results["good"].summary["overall"]["mMV@5"] > 0.9
    assert results["noise"].summary["overall"]["mMV@5"] < 0.7
    report = write_report(results, "bach", tmp_path / "report", [1, 5], synthetic=True)
    text = report.read_text()
    assert "synthetic" in text and "| good |" in text and "**1.000**" in text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["best"] == "good" and metrics["chance"] == pytest.approx(1 / 3)
    for png in ("metrics.png", "confusion.png", "embedding_map.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
