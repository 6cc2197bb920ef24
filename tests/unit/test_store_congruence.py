"""The same operations on EdgeStore (embedded engine) and ServerStore (qdrant-client's in-memory
local mode standing in for the server API) give the same ids, scores, payloads, counts and stats."""

from __future__ import annotations

import http.server
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from histo.errors import InvalidInputError, StoreLockedError, StoreUnavailableError, UnknownNameError
from histo.store import EdgeStore, Point, SearchFilter, ServerStore, VectorStore, open_store
from histo.store.base import RRF_K, STRATEGIES, Hit, Leg

N = 500
NS = uuid.UUID("5b8f3c1e-2a44-4e0b-8c7d-0f9e6d5a4b21")
LABELS = {"bach": ("Normal", "Benign", "InSitu", "Invasive"), "crc": ("g1", "g2", "g3")}
FILTERS = [
    None,
    SearchFilter(dataset="crc"),
    SearchFilter(labels=("Benign", "g2", "relabelled")),
    SearchFilter(split="test"),
    SearchFilter(exclude_image_ids=("bach/img1", "crc/img6")),
    SearchFilter(exclude_slide_ids=("bach/slide0", "crc/slide2")),
    SearchFilter(exclude_patient_ids=("bach/patient1",)),
    SearchFilter(
        dataset="bach", labels=("Normal", "Invasive"), split="train", exclude_patient_ids=("bach/patient0",)
    ),
]


def pid_of(k: int) -> str:
    return str(uuid.uuid5(NS, str(k)))


def payload_of(k: int) -> dict[str, Any]:
    dataset = "crc" if k % 4 == 0 else "bach"
    labels = LABELS[dataset]
    return {
        "dataset": dataset,
        "label": labels[(k // 2) % len(labels)],
        "split": ("train", "val", "test")[(k // 25) % 3],
        "image_id": f"{dataset}/img{k // 5}",
        "slide_id": f"{dataset}/slide{k // 25}",
        "patient_id": f"{dataset}/patient{k // 100}",
        "x": k,
        "mpp": 0.25 * (1 + k % 3),
        "tags": ["synthetic", str(k % 2)],
    }


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def scenario(store: VectorStore) -> None:
    """Ingest, re-ingest, add an encoder later, fill it for part of the index, add new points."""
    rng = np.random.default_rng(7)
    a, b = unit(rng, N + 20, 8), unit(rng, N + 20, 16)
    assert store.ensure_vectors({"a": 8}) == ["a"]
    for start in range(0, N, 100):
        store.upsert(Point(pid_of(k), {"a": a[k]}, payload_of(k)) for k in range(start, start + 100))
    store.upsert(Point(pid_of(k), {"a": a[k]}, {**payload_of(k), "label": "relabelled"}) for k in range(50))
    assert store.ensure_vectors({"a": 8, "b": 16}) == ["b"]
    store.upsert(Point(pid_of(k), {"b": b[k]}) for k in range(300))
    store.upsert(Point(pid_of(k), {"b": b[k]}, payload_of(k)) for k in range(N, N + 20))
    store.upsert(
        Point(pid_of(k), {}, {"dataset": "bach", "label": "Normal", "x": k}) for k in range(100, 110)
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VectorStore, VectorStore]]:
    edge = EdgeStore(tmp_path_factory.mktemp("edge") / "index")
    server = ServerStore.in_memory()
    for store in (edge, server):
        scenario(store)
    yield edge, server
    edge.close()
    server.close()


def test_same_vectors_counts_and_stats(pair: tuple[VectorStore, VectorStore]) -> None:
    edge, server = pair
    assert edge.vectors() == server.vectors() == {"a": 8, "b": 16}
    assert edge.count() == server.count() == N + 20
    for flt in FILTERS:
        assert edge.count(flt) == server.count(flt)
    stats, other = edge.stats(), server.stats()
    # the embedded default quantizes (int8); qdrant-client's local mode keeps no quantization
    assert (stats.pop("quantization"), other.pop("quantization")) == ("int8", "none")
    assert stats == other
    assert stats["vectors"] == {"a": {"dim": 8, "points": N}, "b": {"dim": 16, "points": 320}}
    assert stats["labels"]["bach"]["relabelled"] == sum(payload_of(k)["dataset"] == "bach" for k in range(50))


@pytest.mark.parametrize("name,dim", [("a", 8), ("b", 16)])
def test_same_hits_for_random_queries_with_and_without_filters(
    pair: tuple[VectorStore, VectorStore], name: str, dim: int
) -> None:
    edge, server = pair
    rng = np.random.default_rng(123)
    compared = 0
    for _ in range(8):
        query = rng.standard_normal(dim).astype(np.float32)
        for flt in FILTERS:
            for limit in (10, 60):
                got_edge = edge.search(name, query, limit=limit, filter=flt)
                got_server = server.search(name, query, limit=limit, filter=flt)
                assert [h.id for h in got_edge] == [h.id for h in got_server]
                np.testing.assert_allclose(
                    [h.score for h in got_edge], [h.score for h in got_server], atol=1e-5, rtol=0
                )
                assert [h.payload for h in got_edge] == [h.payload for h in got_server]
                compared += len(got_edge)
    assert compared > 1000


def test_same_records_and_missing_vectors(pair: tuple[VectorStore, VectorStore]) -> None:
    edge, server = pair
    ids = [pid_of(k) for k in range(N + 20)] + [str(uuid.uuid5(NS, "absent"))]
    for with_vectors in (False, True, ["b"]):
        got_edge = edge.retrieve(ids, with_vectors=with_vectors)
        got_server = server.retrieve(ids, with_vectors=with_vectors)
        assert [r.id for r in got_edge] == [r.id for r in got_server] == ids[:-1]
        assert [r.payload for r in got_edge] == [r.payload for r in got_server]
        for re_, rs in zip(got_edge, got_server, strict=True):
            assert set(re_.vectors) == set(rs.vectors)
            for key in re_.vectors:
                np.testing.assert_allclose(re_.vectors[key], rs.vectors[key], atol=1e-6)
    missing = edge.missing_vectors(ids, ["a", "b"])
    assert missing == server.missing_vectors(ids, ["a", "b"])
    assert len(missing) == 200 + 20 + 1  # b absent for 300..499, a absent for the 20 new ones, one unknown id


ERRORS: list[tuple[str, Callable[[VectorStore], object], type[Exception]]] = [
    ("unknown vector", lambda s: s.search("zz", [1.0] * 8), UnknownNameError),
    ("wrong dimension", lambda s: s.search("a", [1.0] * 3), InvalidInputError),
    ("dimension mismatch", lambda s: s.ensure_vectors({"a": 9}), InvalidInputError),
    ("unknown vector on write", lambda s: s.upsert([Point(pid_of(0), {"zz": [1.0]})]), UnknownNameError),
    ("unknown vector on resume", lambda s: s.missing_vectors([pid_of(0)], ["zz"]), UnknownNameError),
    ("bad id", lambda s: s.retrieve(["x"]), InvalidInputError),
]


@pytest.mark.parametrize("case", [c[0] for c in ERRORS])
def test_same_errors(pair: tuple[VectorStore, VectorStore], case: str) -> None:
    _, call, error = next(c for c in ERRORS if c[0] == case)
    messages = []
    for store in pair:
        with pytest.raises(error) as info:
            call(store)
        messages.append(str(info.value).replace(store.description, "<where>"))
    assert messages[0] == messages[1]


def test_drop_gives_the_same_empty_store(tmp_path: Path) -> None:
    stores: list[VectorStore] = [EdgeStore(tmp_path / "index"), ServerStore.in_memory()]
    for store in stores:
        store.ensure_vectors({"a": 4})
        store.upsert([Point(pid_of(1), {"a": [1.0, 0.0, 0.0, 0.0]}, {"dataset": "bach"})])
        store.drop()
        assert store.count() == 0 and store.vectors() == {} and store.retrieve([pid_of(1)]) == []
        assert store.stats() == {
            "collection": "histo",
            "points": 0,
            "vectors": {},
            "datasets": {},
            "labels": {},
        }
        with pytest.raises(InvalidInputError, match="ensure_vectors"):
            store.upsert([Point(pid_of(1), {}, {"dataset": "bach"})])
        store.close()


def test_an_unreachable_server_is_one_line_that_names_the_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(StoreUnavailableError) as info:
        open_store(url=url, timeout=2)
    message = str(info.value)
    assert url in message and "HISTO_QDRANT__URL" in message and "\n" not in message


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    with open_store(url=":memory:", collection="other") as memory:
        assert isinstance(memory, ServerStore) and memory.collection == "other"
    with open_store(path=tmp_path / "index") as embedded:
        assert isinstance(embedded, EdgeStore)
    with pytest.raises(InvalidInputError, match="HISTO_QDRANT__URL"):
        open_store()


def test_local_mode_folder_is_locked_too(tmp_path: Path) -> None:
    with ServerStore.local(tmp_path / "local"), pytest.raises(StoreLockedError, match="HISTO_QDRANT__URL"):
        ServerStore.local(tmp_path / "local")


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_a_refused_api_key_says_which_setting_to_fix() -> None:
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": {"error": "Must provide an API key"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            with pytest.raises(StoreUnavailableError, match="HISTO_QDRANT__API_KEY") as info:
                open_store(url=url, api_key="wrong", timeout=5)
            assert url in str(info.value) and "\n" not in str(info.value)
        finally:
            server.shutdown()


def test_scroll_returns_every_matching_point_on_both_backends(tmp_path: Path) -> None:

    rng = np.random.default_rng(5)
    points = [
        Point(
            str(uuid.uuid4()),
            {"v": rng.normal(size=4)},
            {"dataset": "d", "label": "ab"[i % 2], "image_id": str(i)},
        )
        for i in range(300)
    ]
    with EdgeStore(tmp_path / "edge") as edge, ServerStore.in_memory() as server:
        seen = []
        for store in (edge, server):
            store.ensure_vectors({"v": 4})
            store.upsert(points)
            everything = list(store.scroll(page=64))
            only_a = list(store.scroll(SearchFilter(labels=("a",)), with_vectors=["v"], page=50))
            assert len(everything) == 300 and len({r.id for r in everything}) == 300
            assert len(only_a) == 150 and all(
                r.payload["label"] == "a" and len(r.vectors["v"]) == 4 for r in only_a
            )
            seen.append(sorted(r.id for r in only_a))
        assert seen[0] == seen[1]


# ------------------------------------------------------------------------------------------------
# Beyond one vector: fusion, recommendation and MMR through each engine's own query API
# ------------------------------------------------------------------------------------------------


def assert_same_hits(got_edge: list[Hit], got_server: list[Hit]) -> None:
    assert [h.id for h in got_edge] == [h.id for h in got_server]
    np.testing.assert_allclose([h.score for h in got_edge], [h.score for h in got_server], atol=1e-5, rtol=0)
    assert [h.sources for h in got_edge] == [h.sources for h in got_server]
    assert [h.payload for h in got_edge] == [h.payload for h in got_server]


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_fusion_gives_the_same_hits_and_sources_on_both_backends(
    pair: tuple[VectorStore, VectorStore], fusion: str
) -> None:
    rng = np.random.default_rng(5)
    compared = 0
    for _ in range(4):
        legs = [Leg("a", rng.standard_normal(8)), Leg("b", rng.standard_normal(16))]
        for flt in FILTERS:
            got = [store.query(legs, 15, flt, fusion=fusion, depth=40) for store in pair]
            assert_same_hits(*got)
            compared += len(got[0])
    assert compared > 300


def test_rrf_scores_are_reciprocal_ranks_of_each_vectors_list(pair: tuple[VectorStore, VectorStore]) -> None:
    """The engine's fused score is sum 1 / (60 + rank), rank from 0, over the lists that hold a
    point, and a hit's sources are exactly those lists."""
    edge, _ = pair
    rng = np.random.default_rng(9)
    qa, qb = rng.standard_normal(8), rng.standard_normal(16)
    flt = SearchFilter(dataset="bach")
    lists = {name: [h.id for h in edge.search(name, q, 30, flt)] for name, q in (("a", qa), ("b", qb))}
    fused = edge.query([Leg("a", qa), Leg("b", qb)], 20, flt, depth=30)
    assert len(fused) == 20
    for hit in fused:
        ranks = {name: ids.index(hit.id) for name, ids in lists.items() if hit.id in ids}
        assert hit.sources == tuple(ranks)
        assert hit.score == pytest.approx(sum(1 / (RRF_K + r) for r in ranks.values()), rel=1e-5)
    assert any(len(h.sources) == 2 for h in fused) and any(len(h.sources) == 1 for h in fused)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_recommendations_agree_on_both_backends(pair: tuple[VectorStore, VectorStore], strategy: str) -> None:
    edge, _ = pair
    records = edge.retrieve([pid_of(k) for k in range(5)], with_vectors=["a", "b"])
    pos_a = tuple(r.vectors["a"] for r in records[:3])
    neg_a = tuple(r.vectors["a"] for r in records[3:])
    examples = tuple(r.id for r in records)  # excluded, as histo's engine excludes them
    for negatives in ((), neg_a):
        for flt in FILTERS[:4]:
            leg = Leg("a", positives=pos_a, negatives=negatives, strategy=strategy)
            flt = SearchFilter(exclude_point_ids=examples) if flt is None else flt
            assert_same_hits(*(store.query([leg], 12, flt) for store in pair))
    fused = [
        Leg("a", positives=pos_a, negatives=neg_a, strategy=strategy),
        Leg("b", positives=(records[0].vectors["b"],), strategy=strategy),
    ]
    hits = [store.query(fused, 12, SearchFilter(exclude_point_ids=examples)) for store in pair]
    assert_same_hits(*hits)
    assert not set(examples) & {h.id for h in hits[0]}


def test_average_vector_is_the_nearest_query_to_qdrants_average(
    pair: tuple[VectorStore, VectorStore],
) -> None:
    edge, _ = pair
    pos = [np.asarray(r.vectors["a"]) for r in edge.retrieve([pid_of(1), pid_of(2)], with_vectors=["a"])]
    neg = np.asarray(edge.retrieve([pid_of(3)], with_vectors=["a"])[0].vectors["a"])
    target = 2 * (pos[0] + pos[1]) / 2 - neg
    recommended = edge.query(
        [Leg("a", positives=tuple(pos), negatives=(neg,), strategy="average_vector")], 10
    )
    assert [h.id for h in recommended] == [h.id for h in edge.search("a", target, 10)]


def test_best_score_ranks_by_the_best_positive_when_it_beats_every_negative(
    pair: tuple[VectorStore, VectorStore],
) -> None:
    edge, _ = pair
    rng = np.random.default_rng(3)
    pos, neg = rng.standard_normal((2, 8)), rng.standard_normal((1, 8))
    leg = Leg("a", positives=tuple(pos), negatives=tuple(neg), strategy="best_score")
    hits = edge.query([leg], 5, exact=True)
    best_pos = max(edge.search("a", p, 1, exact=True)[0].score for p in pos)
    # Qdrant maps that similarity s into (0.5, 1) by a fast sigmoid, 0.5 + 0.5 * s / (1 + |s|)
    assert hits[0].score == pytest.approx(0.5 + 0.5 * best_pos / (1 + abs(best_pos)), abs=1e-5)


@pytest.mark.parametrize("diversity", [0.0, 0.5, 0.9])
def test_mmr_agrees_on_both_backends_and_zero_diversity_is_plain_ranking(
    pair: tuple[VectorStore, VectorStore], diversity: float
) -> None:
    rng = np.random.default_rng(11)
    for _ in range(3):
        query = rng.standard_normal(8)
        for flt in FILTERS[:3]:
            got = [store.query([Leg("a", query, diversity=diversity)], 10, flt) for store in pair]
            assert_same_hits(*got)
            plain = pair[0].search("a", query, 10, flt)
            if diversity == 0.0:
                assert [h.id for h in got[0]] == [h.id for h in plain]
            elif diversity == 0.9:
                assert [h.id for h in got[0]] != [h.id for h in plain]


QUERY_ERRORS: list[tuple[str, Callable[[VectorStore], object], type[Exception]]] = [
    ("no legs", lambda s: s.query([], 5), InvalidInputError),
    (
        "unknown fusion",
        lambda s: s.query([Leg("a", [1.0] * 8), Leg("b", [1.0] * 16)], 5, fusion="max"),
        UnknownNameError,
    ),
    (
        "unknown strategy",
        lambda s: s.query([Leg("a", positives=([1.0] * 8,), strategy="best")], 5),
        UnknownNameError,
    ),
    ("negatives only", lambda s: s.query([Leg("a", negatives=([1.0] * 8,))], 5), InvalidInputError),
    ("diversity above 1", lambda s: s.query([Leg("a", [1.0] * 8, diversity=1.5)], 5), InvalidInputError),
    ("a vector twice", lambda s: s.query([Leg("a", [1.0] * 8), Leg("a", [2.0] * 8)], 5), InvalidInputError),
    (
        "example of the wrong size",
        lambda s: s.query([Leg("b", positives=([1.0] * 8,))], 5),
        InvalidInputError,
    ),
]


@pytest.mark.parametrize("case", [c[0] for c in QUERY_ERRORS])
def test_same_query_errors(pair: tuple[VectorStore, VectorStore], case: str) -> None:
    _, call, error = next(c for c in QUERY_ERRORS if c[0] == case)
    messages = []
    for store in pair:
        with pytest.raises(error) as info:
            call(store)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
