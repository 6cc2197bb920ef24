"""SearchEngine beyond one vector, on the real embedded store: encoders fused by RRF / DBSF,
relevance feedback (like / unlike ids and images) and MMR diversity. Expected rankings come from
numpy over the stored vectors (exact search): RRF over each encoder's brute-force list, Rocchio's
average vector, the plain ranking that MMR must leave at diversity 0."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from histo.data.tiling import TilingConfig
from histo.embed_batcher import Batching, EmbedBatcher
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import InvalidInputError, NotFoundError, UnknownNameError
from histo.search import MAX_EXAMPLES, Feedback, SearchEngine
from histo.store import EdgeStore, Point, SearchFilter
from histo.store.base import FUSION_DEPTH, RRF_K
from tests.unit.test_search_engine import (
    COLOURS,
    TILE,
    TILES_PER_IMAGE,
    colour_tile,
    image_bytes,
    payload,
    pid,
)

N = 180
NAMES = ("colorhist", "swapped")
Rows = list[tuple[str, float, dict[str, Any]]]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchEngine]:
    """Two encoders that see tiles differently: colour histograms of the tile, and of the tile
    with its colour channels rotated (stored under "swapped", queried with the same histogram)."""
    folder = tmp_path_factory.mktemp("encoders")
    for name in NAMES:
        make_baseline_artifact("colorhist", folder / name, input_size=TILE)
    embedders = {name: Embedder.from_artifact(folder / name, device="cpu") for name in NAMES}
    tiles = np.stack([colour_tile(COLOURS[(k // TILES_PER_IMAGE) % len(COLOURS)], k) for k in range(N)])
    plain = embedders["colorhist"].embed(tiles)
    swapped = embedders["swapped"].embed(np.ascontiguousarray(tiles[..., [1, 2, 0]]))
    with EdgeStore(tmp_path_factory.mktemp("store") / "index") as store:
        store.ensure_vectors({name: e.dim for name, e in embedders.items()})
        store.upsert(
            Point(pid(k), {"colorhist": plain[k], "swapped": swapped[k]}, payload(k)) for k in range(N)
        )
        yield SearchEngine(store, embedders, tiling=TilingConfig(tile_size=TILE))


def stored(engine: SearchEngine, name: str) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    records = list(engine.store.scroll(with_vectors=[name]))
    vectors = np.array([r.vectors[name] for r in records], dtype=np.float64)
    return (
        [r.id for r in records],
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        [r.payload for r in records],
    )


def cosine_rows(engine: SearchEngine, name: str, query: np.ndarray, skip: set[str] = frozenset()) -> Rows:
    ids, vectors, payloads = stored(engine, name)
    q = np.asarray(query, dtype=np.float64)
    scores = vectors @ (q / np.linalg.norm(q))
    rows = [(i, float(s), p) for i, s, p in zip(ids, scores, payloads, strict=True) if i not in skip]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def rrf_rows(lists: list[Rows], depth: int) -> Rows:
    """Reciprocal rank fusion of the lists' first ``depth`` rows (rank from 0, k = 60)."""
    scores: dict[str, float] = {}
    payloads: dict[str, dict[str, Any]] = {}
    for rows in lists:
        for rank, (i, _, p) in enumerate(rows[:depth]):
            scores[i] = scores.get(i, 0.0) + 1.0 / (RRF_K + rank)
            payloads[i] = p
    return sorted(((i, s, payloads[i]) for i, s in scores.items()), key=lambda r: (-r[1], r[0]))


def vector_of(engine: SearchEngine, name: str, point: str) -> np.ndarray:
    return np.asarray(engine.store.retrieve([point], with_vectors=[name])[0].vectors[name])


# ------------------------------------------------------------------------------------------------
# Fusion
# ------------------------------------------------------------------------------------------------


def test_fused_point_query_is_rrf_of_each_encoders_exact_list(engine: SearchEngine) -> None:
    target = pid(13)  # img2
    own_image = lambda rows: [r for r in rows if r[2]["image_id"] != "img2"]  # noqa: E731
    lists = [own_image(cosine_rows(engine, n, vector_of(engine, n, target))) for n in NAMES]
    expected = rrf_rows(lists, FUSION_DEPTH)
    result = engine.search(point_id=target, encoders=list(NAMES), top_k=12, exact=True)
    assert result.encoder == "colorhist+swapped" and result.encoders == list(NAMES)
    assert result.fusion == "rrf"
    assert [h.id for h in result.hits] == [r[0] for r in expected[:12]]
    np.testing.assert_allclose([h.score for h in result.hits], [r[1] for r in expected[:12]], atol=1e-6)
    tops = [{r[0] for r in rows[:FUSION_DEPTH]} for rows in lists]
    for hit in result.hits:
        assert hit.found_by == tuple(n for n, top in zip(NAMES, tops, strict=True) if hit.id in top)
    assert target not in [h.id for h in result.hits]


def test_fusion_by_dbsf_differs_from_rrf_and_keeps_filters(engine: SearchEngine) -> None:
    flt = SearchFilter(dataset="bach", labels=("A", "B"))
    rrf = engine.search(point_id=pid(13), encoders=list(NAMES), top_k=20, filter=flt, exact=True)
    dbsf = engine.search(
        point_id=pid(13), encoders=list(NAMES), fusion="dbsf", top_k=20, filter=flt, exact=True
    )
    for result in (rrf, dbsf):
        assert len(result.hits) == 20
        assert all(h.payload["dataset"] == "bach" and h.payload["label"] in "AB" for h in result.hits)
    assert dbsf.fusion == "dbsf" and max(h.score for h in dbsf.hits) > 0.1 > max(h.score for h in rrf.hits)


def test_fused_image_query_tiles_the_image_and_names_the_query_tile(engine: SearchEngine) -> None:
    left, right = colour_tile(COLOURS[0], 1), colour_tile(COLOURS[2], 2)
    result = engine.search(
        image=image_bytes(np.concatenate([left, right], axis=1)), encoders=list(NAMES), top_k=10
    )
    assert len(result.query_boxes) == 2
    assert {h.query_tile for h in result.hits} <= {0, 1} and all(h.found_by for h in result.hits)


def test_fusion_with_grouping_keeps_at_most_per_image_and_the_fused_order(engine: SearchEngine) -> None:
    plain = engine.search(point_id=pid(13), encoders=list(NAMES), top_k=N - 20, exact=True)
    grouped = engine.search(point_id=pid(13), encoders=list(NAMES), top_k=8, per_image=2, exact=True)
    counts: dict[str, int] = {}
    expected = []
    for hit in plain.hits:  # the fused ranking, each image's best two kept
        image = hit.payload["image_id"]
        if counts.get(image, 0) < 2:
            counts[image] = counts.get(image, 0) + 1
            expected.append(hit.id)
    assert [h.id for h in grouped.hits] == expected[:8]


# ------------------------------------------------------------------------------------------------
# Relevance feedback
# ------------------------------------------------------------------------------------------------


def test_feedback_average_vector_is_rocchio_and_leaves_out_the_examples(engine: SearchEngine) -> None:
    query, liked, unliked = pid(13), [pid(40), pid(41)], [pid(100)]
    vectors = {p: vector_of(engine, "colorhist", p) for p in [query, *liked, *unliked]}
    unit = {p: v / np.linalg.norm(v) for p, v in vectors.items()}
    mean_pos = np.mean([unit[query], *(unit[p] for p in liked)], axis=0)
    target = 2 * mean_pos - unit[unliked[0]]
    skip = {query, *liked, *unliked}
    expected = [r for r in cosine_rows(engine, "colorhist", target, skip) if r[2]["image_id"] != "img2"]
    result = engine.search(
        point_id=query,
        encoder="colorhist",
        feedback=Feedback(like=tuple(liked), unlike=tuple(unliked)),
        exact=True,
    )
    assert [h.id for h in result.hits] == [r[0] for r in expected[:10]]
    assert not skip & {h.id for h in result.hits}


@pytest.mark.parametrize("strategy", ["best_score", "sum_scores", "average_vector"])
def test_liked_examples_alone_are_a_query_and_pull_towards_their_colour(
    engine: SearchEngine, strategy: str
) -> None:
    liked = tuple(pid(k) for k in range(6 * 2, 6 * 2 + 3))  # tiles of img2 (colour 2)
    unliked = (pid(6 * 3),)  # a tile of img3 (colour 3)
    result = engine.search(
        encoder="colorhist", feedback=Feedback(like=liked, unlike=unliked, strategy=strategy), top_k=5
    )
    colours = [(int(h.payload["image_id"][3:])) % len(COLOURS) for h in result.hits]
    assert colours.count(2) >= 4, colours
    assert not set(liked) & {h.id for h in result.hits}


def test_feedback_with_images_and_several_encoders(engine: SearchEngine) -> None:
    like = image_bytes(colour_tile(COLOURS[4], 99))
    unlike = image_bytes(colour_tile(COLOURS[0], 98))
    result = engine.search(
        encoders=list(NAMES), feedback=Feedback(like_images=(like,), unlike_images=(unlike,)), top_k=6
    )
    assert result.fusion == "rrf" and all(h.found_by for h in result.hits)
    assert all(int(h.payload["image_id"][3:]) % len(COLOURS) == 4 for h in result.hits[:3])


FEEDBACK_ERRORS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"feedback": Feedback(unlike=(pid(1),))}, InvalidInputError, "exactly one query"),
    (
        {"point_id": pid(1), "feedback": Feedback(like=(pid(2),), unlike=(pid(2),))},
        InvalidInputError,
        "both liked",
    ),
    (
        {"point_id": pid(1), "feedback": Feedback(like=tuple(pid(k) for k in range(MAX_EXAMPLES + 1)))},
        InvalidInputError,
        "at most 64",
    ),
    ({"feedback": Feedback(like=(str(uuid.uuid4()),))}, NotFoundError, "not in the index"),
    ({"feedback": Feedback(like=("tile-1",))}, InvalidInputError, "not a UUID"),
    ({"feedback": Feedback(like=(pid(1),), strategy="best")}, UnknownNameError, "strategy"),
    ({"feedback": Feedback(like_images=(b"not an image",))}, InvalidInputError, "image"),
    ({"point_id": pid(1), "encoders": ["colorhist", "nope"]}, UnknownNameError, "nope"),
    ({"point_id": pid(1), "encoder": "colorhist", "encoders": list(NAMES)}, InvalidInputError, "not both"),
    ({"point_id": pid(1), "encoders": list(NAMES), "fusion": "max"}, UnknownNameError, "fusion"),
    ({"vector": [1.0] * 512, "encoders": list(NAMES)}, InvalidInputError, "raw vector"),
    ({"point_id": pid(1), "diversity": 1.5}, InvalidInputError, "from 0"),
    ({"point_id": pid(1), "encoders": list(NAMES), "diversity": 0.5}, InvalidInputError, "several"),
    ({"point_id": pid(1), "diversity": 0.5, "per_image": 1}, InvalidInputError, "not both"),
    ({"point_id": pid(1), "diversity": 0.5, "feedback": Feedback(like=(pid(2),))}, InvalidInputError, "like"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), FEEDBACK_ERRORS)
def test_bad_fusion_feedback_and_diversity_requests(
    engine: SearchEngine, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        engine.search(**kwargs)


# ------------------------------------------------------------------------------------------------
# Diversity
# ------------------------------------------------------------------------------------------------


def test_diversity_zero_is_plain_ranking_and_more_diversity_reaches_more_images(engine: SearchEngine) -> None:
    plain = engine.search(
        point_id=pid(13), encoder="colorhist", top_k=10, include_same_image=True, exact=True
    )
    zero = engine.search(
        point_id=pid(13), encoder="colorhist", top_k=10, include_same_image=True, diversity=0.0
    )
    diverse = engine.search(
        point_id=pid(13), encoder="colorhist", top_k=10, include_same_image=True, diversity=0.8
    )
    assert [h.id for h in zero.hits] == [h.id for h in plain.hits]
    colours = lambda r: {int(h.payload["image_id"][3:]) % len(COLOURS) for h in r.hits}  # noqa: E731
    assert len(colours(diverse)) > len(colours(plain))
    # scores stay cosine similarities to the query, whatever the order
    cosine = {i: s for i, s, _ in cosine_rows(engine, "colorhist", vector_of(engine, "colorhist", pid(13)))}
    assert [h.score for h in diverse.hits] == pytest.approx([cosine[h.id] for h in diverse.hits], abs=1e-4)


def test_result_json_names_the_encoders_and_who_found_each_hit(engine: SearchEngine) -> None:
    data = engine.search(point_id=pid(13), encoders=list(NAMES), top_k=3).as_dict()
    assert data["encoders"] == list(NAMES) and data["fusion"] == "rrf"
    assert all(set(h["found_by"]) <= set(NAMES) and h["found_by"] for h in data["hits"])
    single = engine.search(point_id=pid(13), encoder="swapped", top_k=3).as_dict()
    assert single["fusion"] is None and all(h["found_by"] == ["swapped"] for h in single["hits"])


# ------------------------------------------------------------------------------------------------
# A server's engine: uploads embedded on a worker thread, concurrent ones batched
# ------------------------------------------------------------------------------------------------


def test_a_batching_engine_answers_concurrent_uploads_as_the_plain_one(engine: SearchEngine) -> None:
    embedders = {name: engine.embedder(name) for name in NAMES}
    batched = SearchEngine(
        engine.store, embedders, tiling=engine.tiling, batching=Batching(max_wait_ms=100), warm_up=False
    )
    uploads = [image_bytes(colour_tile(COLOURS[k % len(COLOURS)], 50 + k)) for k in range(6)]
    results: list[Any] = [None] * len(uploads)
    start = threading.Barrier(len(uploads))

    def search(i: int) -> None:
        start.wait()
        results[i] = batched.search(image=uploads[i], encoders=list(NAMES), top_k=5, exact=True)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(len(uploads))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        batched.close()
    for upload, got in zip(uploads, results, strict=True):
        want = engine.search(image=upload, encoders=list(NAMES), top_k=5, exact=True)
        assert [h.id for h in got.hits] == [h.id for h in want.hits]
    workers = [batched.embedder(name) for name in NAMES]
    assert all(isinstance(w, EmbedBatcher) and w.requests == 6 and w.batches < 6 for w in workers)
