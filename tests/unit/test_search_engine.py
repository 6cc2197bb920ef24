"""SearchEngine on the real embedded store: query kinds, filters, grouping, tiling of large query
images and the max-similarity rule, which encoders are searchable, and errors. Expected rankings
come from brute-force numpy cosine over the stored vectors (exact search)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from histo.data.records import Box
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoder_choice import default_encoder
from histo.encoders.artifact import list_artifacts
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    InvalidInputError,
    NotFoundError,
    UnknownNameError,
)
from histo.search import SearchEngine, searchable_artifacts
from histo.store import EdgeStore, Point, SearchFilter, VectorStore

TILE = 32
NS = uuid.UUID("7e3f6a0c-1d2b-4c5e-8f9a-0b1c2d3e4f50")
N = 240
TILES_PER_IMAGE = 6


def pid(k: int) -> str:
    return str(uuid.uuid5(NS, f"tile-{k}"))


def payload(k: int) -> dict[str, Any]:
    dataset = "bracs" if k % 2 else "bach"
    image = k // TILES_PER_IMAGE
    return {
        "dataset": dataset,
        "label": ("A", "B", "C")[k % 3],
        "split": ("train", "test")[(k // 12) % 2],
        "image_id": f"img{image}",
        "slide_id": f"slide{image // 4}",
        "patient_id": f"patient{image // 8}",
        "x": (k % TILES_PER_IMAGE) * TILE,
        "y": 0,
    }


def image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def colour_tile(rgb: tuple[int, int, int], seed: int, size: int = TILE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    return np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)


COLOURS = [(200, 120, 170), (120, 80, 190), (210, 160, 120), (150, 60, 90), (90, 140, 200)]


@pytest.fixture(scope="module")
def encoders_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("encoders")
    make_baseline_artifact("colorhist", folder / "colorhist", input_size=TILE)
    make_baseline_artifact("colorhist", folder / "colorhist_b", input_size=TILE)
    make_baseline_artifact("colorhist", folder / "colorhist_c", input_size=TILE)
    return folder


@pytest.fixture(scope="module")
def colorhist(encoders_dir: Path) -> Embedder:
    return Embedder.from_artifact(encoders_dir / "colorhist", device="cpu")


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    """N tiles, one colour per image (so colour histograms have real neighbours, mostly in the
    same image)."""
    return np.stack([colour_tile(COLOURS[(k // TILES_PER_IMAGE) % len(COLOURS)], k) for k in range(N)])


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, colorhist: Embedder, tiles: np.ndarray
) -> Iterator[EdgeStore]:
    """Read-only for the tests. Vectors: colorhist (every point), colorhist_b (no point has it),
    other (8-d, no artifact); artifacts: colorhist, colorhist_b, colorhist_c (no vector)."""
    with EdgeStore(tmp_path_factory.mktemp("store") / "index") as s:
        s.ensure_vectors({"colorhist": colorhist.dim, "colorhist_b": colorhist.dim, "other": 8})
        vectors = colorhist.embed(tiles)
        s.upsert(Point(pid(k), {"colorhist": vectors[k]}, payload(k)) for k in range(N))
        yield s


@pytest.fixture
def engine(store: EdgeStore, colorhist: Embedder) -> SearchEngine:
    return SearchEngine(store, {"colorhist": colorhist}, tiling=TilingConfig(tile_size=TILE))


def stored(store: VectorStore) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    records = list(store.scroll(with_vectors=["colorhist"]))
    ids = [r.id for r in records]
    vectors = np.array([r.vectors["colorhist"] for r in records], dtype=np.float64)
    return ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [r.payload for r in records]


def brute(
    store: VectorStore,
    queries: np.ndarray,
    keep: Callable[[dict[str, Any]], bool] = lambda p: True,
    skip: frozenset[str] = frozenset(),
) -> list[tuple[str, float, dict[str, Any]]]:
    """Every kept tile with its max cosine over the query vectors, best first."""
    ids, vectors, payloads = stored(store)
    q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = (vectors @ q.T).max(axis=1)
    rows = [
        (i, float(s), p) for i, s, p in zip(ids, scores, payloads, strict=True) if keep(p) and i not in skip
    ]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def grouped(rows: list[tuple[str, float, dict[str, Any]]], per_image: int) -> list[tuple[str, float, Any]]:
    """Brute-force grouping: keep each image's best ``per_image`` rows, in rank order."""
    counts: dict[str, int] = {}
    out = []
    for i, s, p in rows:
        image = p.get("image_id", i)
        if counts.get(image, 0) < per_image:
            counts[image] = counts.get(image, 0) + 1
            out.append((i, s, p))
    return out


def ids_of(result: Any) -> list[str]:
    return [h.id for h in result.hits]


def assert_same_ranking(result: Any, expected: list[tuple[str, float, dict[str, Any]]], k: int) -> None:
    """Same scores in the same order; ids equal wherever the score is not tied with a neighbour."""
    got = [(h.id, h.score) for h in result.hits]
    want = expected[:k]
    assert len(got) == len(want)
    assert np.allclose([s for _, s in got], [s for _, s, _ in want], atol=1e-5)
    for n, ((gid, gscore), (wid, _, _)) in enumerate(zip(got, want, strict=True)):
        ties = [w for w in expected if abs(w[1] - gscore) < 1e-6]
        assert gid == wid or any(t[0] == gid for t in ties), n


# ------------------------------------------------------------------------------------------------
# Query kinds and filters
# ------------------------------------------------------------------------------------------------


FILTERS: list[tuple[SearchFilter, Callable[[dict[str, Any]], bool]]] = [
    (SearchFilter(), lambda p: True),
    (SearchFilter(dataset="bracs"), lambda p: p["dataset"] == "bracs"),
    (SearchFilter(labels=("A", "C")), lambda p: p["label"] in ("A", "C")),
    (SearchFilter(split="test"), lambda p: p["split"] == "test"),
    (SearchFilter(exclude_image_ids=("img0", "img3")), lambda p: p["image_id"] not in ("img0", "img3")),
    (SearchFilter(exclude_slide_ids=("slide1",)), lambda p: p["slide_id"] != "slide1"),
    (SearchFilter(exclude_patient_ids=("patient0",)), lambda p: p["patient_id"] != "patient0"),
    (
        SearchFilter(dataset="bach", labels=("B",), split="train", exclude_image_ids=("img2",)),
        lambda p: (
            p["dataset"] == "bach" and p["label"] == "B" and p["split"] == "train" and p["image_id"] != "img2"
        ),
    ),
]


@pytest.mark.parametrize("case", range(len(FILTERS)))
def test_vector_query_with_each_filter_matches_brute_force(engine: SearchEngine, case: int) -> None:
    flt, keep = FILTERS[case]
    query = np.random.default_rng(case).random(512).astype(np.float32)
    result = engine.search(vector=query, encoder="colorhist", top_k=15, filter=flt, exact=True)
    assert result.encoder == "colorhist" and result.query_boxes == [] and result.took_ms > 0
    assert all(h.query_tile is None for h in result.hits)
    assert all(keep(h.payload) for h in result.hits)
    assert_same_ranking(result, brute(engine.store, query, keep), 15)


def test_point_query_excludes_itself_and_by_default_its_image(engine: SearchEngine) -> None:
    target = pid(7)  # img1
    ids, vectors, _ = stored(engine.store)
    query = vectors[ids.index(target)]
    default = engine.search(point_id=target, top_k=20, exact=True)
    assert target not in ids_of(default)
    assert all(h.payload["image_id"] != "img1" for h in default.hits)
    assert_same_ranking(default, brute(engine.store, query, lambda p: p["image_id"] != "img1"), 20)

    same = engine.search(point_id=target, top_k=20, include_same_image=True, exact=True)
    assert target not in ids_of(same)
    assert_same_ranking(same, brute(engine.store, query, skip=frozenset({target})), 20)
    everything = engine.search(point_id=target, top_k=N, include_same_image=True)
    assert sum(h.payload["image_id"] == "img1" for h in everything.hits) == TILES_PER_IMAGE - 1
    # the point's own vector is exactly its stored one: as good as querying with that vector
    assert ids_of(engine.search(point_id=target.upper(), top_k=5, exact=True)) == ids_of(default)[:5]


def test_point_query_combines_with_filters(engine: SearchEngine) -> None:
    result = engine.search(point_id=pid(7), top_k=10, filter=SearchFilter(dataset="bach", labels=("A",)))
    assert result.hits and all(
        h.payload["dataset"] == "bach" and h.payload["label"] == "A" for h in result.hits
    )


def test_point_query_errors(engine: SearchEngine, store: EdgeStore, encoders_dir: Path) -> None:
    with pytest.raises(NotFoundError, match="not in the index"):
        engine.search(point_id=str(uuid.uuid4()))
    with pytest.raises(InvalidInputError, match="not a UUID"):
        engine.search(point_id="tile-7")
    other = SearchEngine(
        store,
        {"colorhist_b": Embedder.from_artifact(encoders_dir / "colorhist_b")},
        warm_up=False,
    )
    with pytest.raises(NotFoundError, match="has no 'colorhist_b' vector"):
        other.search(point_id=pid(7), encoder="colorhist_b")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, InvalidInputError, "exactly one query"),
        ({"vector": [1.0] * 512, "point_id": "x"}, InvalidInputError, "point_id and vector"),
        ({"vector": [1.0] * 512, "top_k": 0}, InvalidInputError, "top_k"),
        ({"vector": [1.0] * 512, "top_k": 1001}, InvalidInputError, "top_k"),
        ({"vector": [1.0] * 512, "per_image": 0}, InvalidInputError, "per_image"),
        ({"vector": [1.0] * 7}, InvalidInputError, "shape"),
        ({"vector": [0.0] * 512}, InvalidInputError, "zeros"),
        ({"vector": [1.0] * 512, "encoder": "nnclr"}, UnknownNameError, "choose one of: colorhist"),
        ({"vector": [1.0] * 512, "encoder": "other"}, UnknownNameError, "choose one of: colorhist"),
        ({"image": b""}, ImageDecodeError, "empty upload"),
        ({"image": b"not an image at all"}, ImageDecodeError, "not a recognised image"),
        ({"image": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}, ImageDecodeError, "uploaded image"),
    ],
)
def test_bad_queries_raise_domain_errors(
    engine: SearchEngine, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        engine.search(**kwargs)


def test_pixel_limit_applies_to_uploads(store: EdgeStore, colorhist: Embedder) -> None:
    engine = SearchEngine(store, {"colorhist": colorhist}, max_pixels=1000, warm_up=False)
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        engine.search(image=image_bytes(colour_tile(COLOURS[0], 0, size=64)))


# ------------------------------------------------------------------------------------------------
# Grouping
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_image", [1, 2, 4])
def test_grouping_keeps_each_images_best_hits(engine: SearchEngine, per_image: int) -> None:
    query = np.asarray(stored(engine.store)[1][0])
    result = engine.search(vector=query, top_k=12, per_image=per_image, exact=True)
    images = [h.payload["image_id"] for h in result.hits]
    assert max(images.count(i) for i in images) <= per_image
    assert_same_ranking(result, grouped(brute(engine.store, query), per_image), 12)
    plain = engine.search(vector=query, top_k=12, exact=True)
    plain_images = [h.payload["image_id"] for h in plain.hits]
    assert max(plain_images.count(i) for i in plain_images) > 1  # grouping changed something


def test_grouping_looks_past_one_dominant_image(tmp_path: Path, colorhist: Embedder) -> None:
    """500 near-identical tiles of one image outrank everything: the engine must widen its
    candidate list (several rounds) and still return the exact grouped ranking."""
    rng = np.random.default_rng(0)
    base = rng.random(512).astype(np.float32)
    with EdgeStore(tmp_path / "index") as store:
        store.ensure_vectors({"colorhist": 512})
        points = [
            Point(pid(k), {"colorhist": base + 0.05 * rng.random(512)}, {"image_id": "big"})
            for k in range(500)
        ]
        points += [
            Point(pid(1000 + k), {"colorhist": base + 0.5 * rng.random(512)}, {"image_id": f"i{k // 3}"})
            for k in range(60)
        ]
        points.append(Point(pid(2000), {"colorhist": base + 0.4 * rng.random(512)}, {}))  # no image id
        store.upsert(points)
        engine = SearchEngine(store, {"colorhist": colorhist}, warm_up=False)
        result = engine.search(vector=base, top_k=10, per_image=2, exact=True)
        images = [h.payload.get("image_id", h.id) for h in result.hits]
        assert images.count("big") == 2 and len(result.hits) == 10
        assert_same_ranking(result, grouped(brute(store, base), 2), 10)


# ------------------------------------------------------------------------------------------------
# Image queries: tiling and the max-similarity rule
# ------------------------------------------------------------------------------------------------


def test_small_image_is_one_tile(engine: SearchEngine, tiles: np.ndarray, colorhist: Embedder) -> None:
    result = engine.search(image=image_bytes(tiles[3]), top_k=5, exact=True)
    assert result.query_boxes == [Box(0, 0, TILE, TILE)]
    assert all(h.query_tile == 0 for h in result.hits)
    assert result.hits[0].id == pid(3) and result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert_same_ranking(result, brute(engine.store, colorhist.embed(tiles[3:4])), 5)


def test_large_image_is_tiled_and_combined_by_max_similarity(
    engine: SearchEngine, colorhist: Embedder
) -> None:
    """A 3x2 grid of tiles of different colours, one of them glass: five query tiles, and every
    hit scores its best similarity over them (exactly the brute-force max)."""
    grid = [colour_tile(COLOURS[i % len(COLOURS)], 100 + i) for i in range(6)]
    grid[4] = np.full((TILE, TILE, 3), 245, dtype=np.uint8)  # background: dropped
    top = np.concatenate(grid[:3], axis=1)
    bottom = np.concatenate(grid[3:], axis=1)
    picture = np.concatenate([top, bottom], axis=0)
    picture = np.pad(picture, ((0, 10), (0, 20), (0, 0)), constant_values=240)  # remainder strips
    result = engine.search(image=image_bytes(picture), top_k=25, exact=True)
    expected_boxes = [Box(x * TILE, y * TILE, TILE, TILE) for y in range(2) for x in range(3)]
    del expected_boxes[4]
    assert result.query_boxes == expected_boxes
    kept = np.stack([grid[i] for i in (0, 1, 2, 3, 5)])
    vectors = colorhist.embed(kept)
    assert_same_ranking(result, brute(engine.store, vectors), 25)
    for hit in result.hits:  # the recorded query tile is the one that gives the score
        stored_vec = np.asarray(
            engine.store.retrieve([hit.id], with_vectors=["colorhist"])[0].vectors["colorhist"]
        )
        sims = vectors @ (stored_vec / np.linalg.norm(stored_vec))
        assert hit.query_tile is not None and sims[hit.query_tile] == pytest.approx(sims.max(), abs=1e-5)
        assert sims.max() == pytest.approx(hit.score, abs=1e-5)
    assert len({h.id for h in result.hits}) == len(result.hits)  # each tile once


def test_query_without_tissue_is_refused_and_a_crowded_one_spread(engine: SearchEngine) -> None:
    glass = Image.fromarray(np.full((TILE * 2, TILE * 3, 3), 245, dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="holds no tissue: none of its 6 tiles"):
        engine.query_tiles(glass)  # all background: no confident hits of nothing
    tissue = np.stack([colour_tile(COLOURS[0], s) for s in range(5)])
    tissue[1, : TILE // 2 + 4] = 245  # more than half glass: below the threshold (0.5), dropped
    strip = Image.fromarray(np.concatenate(list(tissue), axis=1))
    assert [b.x for b in engine.query_tiles(strip)[0]] == [0, 2 * TILE, 3 * TILE, 4 * TILE]
    engine.max_query_tiles = 2
    boxes, _ = engine.query_tiles(strip)
    assert boxes == [Box(0, 0, TILE, TILE), Box(4 * TILE, 0, TILE, TILE)]  # first and last: spread


def test_large_image_mpp_resamples_tiles(engine: SearchEngine) -> None:
    engine.tiling = TilingConfig(tile_size=TILE, target_mpp=1.0)
    picture = np.concatenate([colour_tile(COLOURS[0], 1, size=2 * TILE)] * 2, axis=1)  # 128x64 at 0.5 µm/px
    result = engine.search(image=image_bytes(picture), mpp=0.5, top_k=3)
    assert result.query_boxes == [Box(0, 0, 2 * TILE, 2 * TILE), Box(2 * TILE, 0, 2 * TILE, 2 * TILE)]
    with pytest.raises(InvalidInputError, match="µm/px"):
        engine.search(image=image_bytes(picture), mpp=-1.0)


def test_jpeg_and_tiff_uploads_work(engine: SearchEngine, tiles: np.ndarray) -> None:
    for fmt in ("JPEG", "TIFF"):
        assert engine.search(image=image_bytes(tiles[0], fmt), top_k=3).hits


# ------------------------------------------------------------------------------------------------
# Encoders: searchable set, default, loaded once; listings
# ------------------------------------------------------------------------------------------------


def test_only_artifacts_that_are_index_vectors_are_searchable(
    store: EdgeStore, encoders_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # colorhist, colorhist_b: artifact + vector; colorhist_c: artifact only; other: vector only
    assert set(searchable_artifacts(store, encoders_dir)) == {"colorhist", "colorhist_b"}
    loads: list[Path] = []
    original = Embedder.from_artifact.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Embedder], path: Path, **kw: Any) -> Embedder:
        loads.append(Path(path))
        return original(cls, path, **kw)

    monkeypatch.setattr(Embedder, "from_artifact", classmethod(counting))
    engine = SearchEngine.load(store, encoders_dir, tiling=TilingConfig(tile_size=TILE))
    assert engine.encoders == ["colorhist", "colorhist_b"] and engine.default == "colorhist"
    assert sorted(p.name for p in loads) == ["colorhist", "colorhist_b"]
    for _ in range(3):
        engine.search(image=image_bytes(colour_tile(COLOURS[1], 9)), top_k=2)
        engine.search(point_id=pid(1), top_k=2)
    assert len(loads) == 2  # loaded once, at construction
    for name in ("colorhist_c", "other"):
        with pytest.raises(UnknownNameError, match="choose one of: colorhist, colorhist_b"):
            SearchEngine.load(store, encoders_dir, names=[name])
    assert SearchEngine.load(store, encoders_dir, names=["colorhist_b"]).encoders == ["colorhist_b"]


def test_dimension_mismatch_is_not_searchable(
    tmp_path: Path, colorhist: Embedder, encoders_dir: Path
) -> None:
    with EdgeStore(tmp_path / "index") as store:
        store.ensure_vectors({"colorhist": 16})
        assert searchable_artifacts(store, encoders_dir) == {}
        engine = SearchEngine(store, {"colorhist": colorhist}, warm_up=False)
        assert engine.encoders == [] and "16-d" in engine.skipped["colorhist"]
        with pytest.raises(InvalidInputError, match="no encoder is searchable"):
            engine.search(vector=[1.0] * 16)
        with pytest.raises(UnknownNameError, match="no encoder is searchable"):
            engine.search(vector=[1.0] * 16, encoder="colorhist")


def test_default_encoder_prefers_trained_then_imagenet_random_colorhist(encoders_dir: Path) -> None:
    meta = list_artifacts(encoders_dir)[0][1]

    def fake(kind: str, method: str) -> Any:
        return type(meta)(**{**meta.__dict__, "kind": kind, "method": method})

    assert default_encoder({}) is None
    assert default_encoder({"c": fake("baseline", "colorhist"), "r": fake("baseline", "random")}) == "r"
    assert default_encoder({"r": fake("baseline", "random"), "i": fake("baseline", "imagenet")}) == "i"
    assert (
        default_encoder(
            {"i": fake("baseline", "imagenet"), "z": fake("ssl", "nnclr"), "a": fake("ssl", "swav")}
        )
        == "a"
    )


def test_list_encoders_and_stats(engine: SearchEngine) -> None:
    (info,) = engine.list_encoders()
    assert (info.name, info.kind, info.method, info.dim, info.input_size) == (
        "colorhist",
        "baseline",
        "colorhist",
        512,
        TILE,
    )
    assert info.points == N and info.is_default and info.trained_on == "-"
    stats = engine.stats()
    assert stats.points == N and stats.encoders == ["colorhist"]
    assert stats.vectors["colorhist"] == {"dim": 512, "points": N} and stats.vectors["other"]["points"] == 0
    assert stats.vectors["colorhist_b"]["points"] == 0
    assert stats.datasets == {"bach": N // 2, "bracs": N // 2}
    assert sum(stats.labels["bach"].values()) == N // 2
    assert stats.as_dict()["encoders"] == ["colorhist"]
