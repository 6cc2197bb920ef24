"""The evaluation protocol: exclusion rules, sampling, and a report written from a small index."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from histo.evaluation import IndexedTiles, Narrowing, evaluate, evaluate_encoder, pick_queries, rank
from histo.report import build_comparison, write_report
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


def _index_points(rng: np.random.Generator, slides: int = 6, skip_part: bool = False) -> list[Point]:
    """Three classes on ``slides`` slides; ``good`` separates them, ``noise`` does not, ``part``
    (good plus noise) exists on the first half of the slides only."""
    centres = {"a": rng.normal(size=8), "b": rng.normal(size=8), "c": rng.normal(size=8)}
    points = []
    for slide in range(slides):
        for label, centre in centres.items():
            for tile in range(3):
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
                vectors = {"good": good, "noise": rng.normal(size=8)}
                if slide < slides // 2 and not skip_part:
                    vectors["part"] = good + 0.5 * rng.normal(size=8)
                pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{slide}/{label}/{tile}"))
                points.append(Point(pid, vectors, payload))
    return points


def _evaluated(tmp_path: Path, points: list[Point], **kwargs: object) -> dict:
    with EdgeStore(tmp_path / "index") as store:
        store.ensure_vectors({name: 8 for name in points[0].vectors})
        store.upsert(points)
        return evaluate(store, "bach", progress=False, **kwargs)  # type: ignore[arg-type]


def test_evaluate_index_and_write_report(tmp_path: Path) -> None:
    results = _evaluated(tmp_path, _index_points(np.random.default_rng(0), skip_part=True), ks=[1, 5])
    assert results["good"].summary["overall"]["mMV@5"] > 0.9
    assert results["noise"].summary["overall"]["mMV@5"] < 0.7
    comparison = build_comparison(results, [1, 5])
    report = write_report(comparison, "bach", tmp_path / "report", synthetic=True)
    text = report.read_text()
    assert "synthetic" in text and "| good |" in text and "**" not in text.split("## Figures")[1]
    # no baseline among the rows: the highest row is the reference, noise is judged against it
    assert (
        comparison.verdicts.reference == "good" and comparison.verdicts.verdict("noise", "mMV@5") == "worse"
    )
    assert "worse: noise" in text and not comparison.verdicts.reference_is_baseline
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["best"] == "good" and metrics["chance"] == pytest.approx(1 / 3)
    low, high = (metrics["uncertainty"]["intervals"]["good"]["mMV@5"][k] for k in ("low", "high"))
    assert low <= results["good"].summary["overall"]["mMV@5"] <= high
    for png in ("metrics.png", "confusion.png", "embedding_map.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000


def test_every_compared_row_is_scored_on_the_same_queries(tmp_path: Path) -> None:
    """``part`` has vectors for half of the tiles: it is scored apart, never in the same table."""
    results = _evaluated(tmp_path, _index_points(np.random.default_rng(1)), ks=[1, 5], max_queries=20)
    good, noise, part = results["good"], results["noise"], results["part"]
    assert good.plan is not None and noise.plan is not None and part.plan is not None
    assert good.plan.ids == noise.plan.ids and len(good.plan.ids) == 20 and good.plan.sampled
    assert not good.partial and not noise.partial and part.partial
    assert set(part.plan.ids) <= set(part.tiles.ids) and len(part.tiles.ids) == 27  # type: ignore[union-attr]
    assert good.summary["candidates"] == noise.summary["candidates"] == 54
    comparison = build_comparison(results, [1, 5])
    assert comparison.compared == ["good", "noise"] and comparison.partial == ["part"]
    assert comparison.verdicts.verdict("part", "mMV@5").startswith("not compared")
    text = write_report(comparison, "bach", tmp_path / "r").read_text()
    figures, apart = text.split("## Figures")[1].split("## Scored on other queries")
    assert "| part |" not in figures and "| part |" in apart


def test_a_class_in_one_image_is_left_out_and_named(tmp_path: Path) -> None:
    """Class ``d`` has a single image: once the query's own image is excluded it can never be
    found, so it is no query (it would count as a certain miss) but stays a candidate."""
    points = _index_points(np.random.default_rng(2), skip_part=True)
    payload = {**points[0].payload, "label": "d", "image_id": "lonely", "slide_id": "s99"}
    points += [Point(str(uuid.uuid4()), points[0].vectors, payload) for _ in range(2)]
    results = _evaluated(tmp_path, points, ks=[1, 5])
    plan = results["good"].plan
    assert plan is not None and plan.left_out == {"d": 2} and "d" not in set(plan.labels.tolist())
    assert set(results["good"].summary["per_class"]) == {"a", "b", "c"}
    assert results["good"].summary["candidates"] == 56
    text = write_report(build_comparison(results, [1, 5]), "bach", tmp_path / "r").read_text()
    assert "Left out as queries: d (2 tiles)" in text


def test_a_rerun_into_one_folder_leaves_no_plot_of_the_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    for name in ("queries.png", "feedback.png"):
        (out / name).write_bytes(b"stale")
    results = _evaluated(tmp_path, _index_points(np.random.default_rng(3), skip_part=True), ks=[1, 5])
    write_report(build_comparison(results, [1, 5]), "bach", out)
    assert not (out / "feedback.png").exists()  # this run has no feedback round
    assert (out / "queries.png").read_bytes()[:4] == b"\x89PNG"  # drawn anew (sources missing: marked)


def test_the_bootstrap_resamples_query_slides(tmp_path: Path) -> None:
    results = _evaluated(tmp_path, _index_points(np.random.default_rng(4), skip_part=True), ks=[1])
    plan = results["good"].plan
    assert plan is not None and sorted(set(plan.units.tolist())) == [f"s{i}" for i in range(6)]


def test_narrowing_to_labels_or_a_source_folder(tmp_path: Path) -> None:
    points = _index_points(np.random.default_rng(5), skip_part=True)
    for n, point in enumerate(points):
        point.payload["root"] = str((tmp_path / ("lab_a" if n % 2 else "lab_b")).absolute())
    results = _evaluated(tmp_path, points, ks=[1], narrowing=Narrowing(labels=("a", "b")))
    tiles = results["good"].tiles
    assert tiles is not None and set(tiles.labels.tolist()) == {"a", "b"} and len(tiles.ids) == 36
    results = _evaluated(tmp_path / "2", points, ks=[1], narrowing=Narrowing(root=tmp_path / "lab_a"))
    tiles = results["good"].tiles
    assert tiles is not None and len(tiles.ids) == 27
    assert {p["root"] for p in tiles.payloads} == {str((tmp_path / "lab_a").absolute())}
