"""EdgeStore on the real embedded Qdrant engine: filters, upsert semantics, resume, new encoders,
persistence, the owner lock and stats. Expected results come from brute-force numpy cosine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import histo
from histo.errors import InvalidInputError, StoreLockedError, StoreUnavailableError, UnknownNameError
from histo.store import FILTER_FIELDS, EdgeStore, Point, SearchFilter, open_store
from histo.store.edge import LOCK_NAME

N = 500
DIMS = {"a": 8, "b": 16}
LABELS = {"bach": ("Normal", "Benign", "InSitu", "Invasive"), "bracs": ("0_N", "1_PB", "5_DCIS")}
NS = uuid.UUID("2d0c1f0e-7a57-4c55-9a1e-6a4c3a3b9d11")
REPO = Path(histo.__file__).resolve().parents[1]


def pid_of(k: int) -> str:
    return str(uuid.uuid5(NS, f"tile-{k}"))


def payload_of(k: int) -> dict[str, Any]:
    dataset = "bracs" if k % 3 == 0 else "bach"
    labels = LABELS[dataset]
    return {
        "dataset": dataset,
        "label": labels[k % len(labels)],
        "split": ("train", "val", "test")[(k // 20) % 3],
        "image_id": f"{dataset}/img{k // 4}",
        "slide_id": f"{dataset}/slide{k // 20}",
        "patient_id": f"{dataset}/patient{k // 60}",
        "path": f"{dataset}/img{k // 4}.png",
        "x": k,
    }


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vecs() -> dict[str, np.ndarray]:
    return {name: unit_vectors(N, dim, seed) for seed, (name, dim) in enumerate(DIMS.items())}


def fill(store: EdgeStore, vecs: dict[str, np.ndarray], names: tuple[str, ...] = ("a",)) -> None:
    store.ensure_vectors({name: DIMS[name] for name in names})
    store.upsert(Point(pid_of(k), {name: vecs[name][k] for name in names}, payload_of(k)) for k in range(N))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    with EdgeStore(tmp_path / "index") as s:
        yield s


@pytest.fixture
def filled(store: EdgeStore, vecs: dict[str, np.ndarray]) -> EdgeStore:
    fill(store, vecs)
    return store


def expected(
    vecs: np.ndarray, query: np.ndarray, keep: Callable[[dict[str, Any]], bool], limit: int
) -> list[tuple[str, float]]:
    scores = vecs @ (query / np.linalg.norm(query))
    order = [k for k in np.argsort(-scores) if keep(payload_of(int(k)))][:limit]
    return [(pid_of(int(k)), float(scores[k])) for k in order]


FILTERS: dict[str, tuple[SearchFilter, Callable[[dict[str, Any]], bool]]] = {
    "none": (SearchFilter(), lambda p: True),
    "dataset": (SearchFilter(dataset="bracs"), lambda p: p["dataset"] == "bracs"),
    "labels any-of": (SearchFilter(labels=("Benign", "1_PB")), lambda p: p["label"] in ("Benign", "1_PB")),
    "split": (SearchFilter(split="val"), lambda p: p["split"] == "val"),
    "exclude images": (
        SearchFilter(exclude_image_ids=("bach/img0", "bach/img1", "bracs/img3")),
        lambda p: p["image_id"] not in ("bach/img0", "bach/img1", "bracs/img3"),
    ),
    "exclude slides": (
        SearchFilter(exclude_slide_ids=("bach/slide0",)),
        lambda p: p["slide_id"] != "bach/slide0",
    ),
    "exclude patients": (
        SearchFilter(exclude_patient_ids=("bach/patient0", "bracs/patient1")),
        lambda p: p["patient_id"] not in ("bach/patient0", "bracs/patient1"),
    ),
    "combined": (
        SearchFilter(
            dataset="bach", labels=("Normal", "InSitu"), split="train", exclude_slide_ids=("bach/slide3",)
        ),
        lambda p: (
            p["dataset"] == "bach"
            and p["label"] in ("Normal", "InSitu")
            and p["split"] == "train"
            and p["slide_id"] != "bach/slide3"
        ),
    ),
}


@pytest.mark.parametrize("case", list(FILTERS))
def test_filters_return_exactly_the_expected_ids_in_score_order(
    filled: EdgeStore, vecs: dict[str, np.ndarray], case: str
) -> None:
    flt, keep = FILTERS[case]
    rng = np.random.default_rng(42)
    for _ in range(5):
        query = rng.standard_normal(DIMS["a"]).astype(np.float32)
        for limit in (10, N):  # top 10, and everything the filter lets through
            hits = filled.search("a", query, limit=limit, filter=flt)
            want = expected(vecs["a"], query, keep, limit)
            assert [h.id for h in hits] == [pid for pid, _ in want]
            np.testing.assert_allclose([h.score for h in hits], [s for _, s in want], atol=1e-5)
            assert all(keep(h.payload) for h in hits)
            assert hits[0].payload == payload_of(hits[0].payload["x"])
    assert filled.count(flt) == sum(keep(payload_of(k)) for k in range(N))


def test_exact_search_and_optimize_keep_the_answers(filled: EdgeStore, vecs: dict[str, np.ndarray]) -> None:
    query = vecs["a"][7]
    before = filled.search("a", query, limit=5, exact=True)
    assert before[0].id == pid_of(7) and before[0].score == pytest.approx(1.0, abs=1e-5)
    filled.optimize()
    assert [h.id for h in filled.search("a", query, limit=5)] == [h.id for h in before]


def test_upsert_twice_keeps_the_count_and_the_latest_payload_wins(
    filled: EdgeStore, vecs: dict[str, np.ndarray]
) -> None:
    assert filled.count() == N
    again = [
        Point(pid_of(k), {"a": vecs["a"][k]}, {**payload_of(k), "label": "relabelled"}) for k in range(50)
    ]
    assert filled.upsert(again) == 50
    assert filled.count() == N
    records = filled.retrieve([pid_of(k) for k in range(50)])
    assert [r.payload["label"] for r in records] == ["relabelled"] * 50
    assert filled.count(SearchFilter(labels=("relabelled",))) == 50
    # the same id twice in one call is one point; the later payload wins
    pid = pid_of(0)
    filled.upsert([Point(pid, {"a": vecs["a"][0]}, {"dataset": "x"}), Point(pid, {}, {"dataset": "y"})])
    assert filled.count() == N
    assert filled.retrieve([pid])[0].payload == {"dataset": "y"}


def test_payload_none_keeps_the_payload_and_a_dict_replaces_it(
    filled: EdgeStore, vecs: dict[str, np.ndarray]
) -> None:
    filled.upsert([Point(pid_of(1), {"a": vecs["a"][2]})])
    record = filled.retrieve([pid_of(1)], with_vectors=True)[0]
    assert record.payload == payload_of(1)
    np.testing.assert_allclose(record.vectors["a"], vecs["a"][2], atol=1e-6)
    filled.upsert([Point(pid_of(1), {}, {"dataset": "bach", "note": "only"})])
    assert filled.retrieve([pid_of(1)])[0].payload == {"dataset": "bach", "note": "only"}


def test_missing_vectors_tells_a_resumed_ingest_what_is_left(
    store: EdgeStore, vecs: dict[str, np.ndarray]
) -> None:
    store.ensure_vectors(DIMS)
    store.upsert(Point(pid_of(k), {"a": vecs["a"][k]}, payload_of(k)) for k in range(0, 20))
    store.upsert(
        Point(pid_of(k), {"a": vecs["a"][k], "b": vecs["b"][k]}, payload_of(k)) for k in range(20, 30)
    )
    ids = [pid_of(k) for k in range(40)]
    missing = store.missing_vectors(ids, ["a", "b"])
    assert missing == {
        **{pid_of(k): {"b"} for k in range(20)},
        **{pid_of(k): {"a", "b"} for k in range(30, 40)},
    }
    assert list(missing) == [pid for pid in ids if pid in missing]  # in the order asked
    assert store.missing_vectors(ids[:30], ["a"]) == {}
    with pytest.raises(UnknownNameError, match="choose one of: a, b"):
        store.missing_vectors(ids, ["c"])


def test_adding_an_encoder_later_fills_it_without_touching_the_rest(
    filled: EdgeStore, vecs: dict[str, np.ndarray]
) -> None:
    before = {r.id: r for r in filled.retrieve([pid_of(k) for k in range(N)], with_vectors=True)}
    assert filled.ensure_vectors({"a": 8, "b": 16}) == ["b"]
    assert filled.ensure_vectors({"a": 8, "b": 16}) == []  # idempotent
    assert filled.vectors() == DIMS
    assert filled.missing_vectors([pid_of(k) for k in range(N)], ["b"]) == {
        pid_of(k): {"b"} for k in range(N)
    }
    filled.upsert(Point(pid_of(k), {"b": vecs["b"][k]}) for k in range(N))
    assert filled.count() == N
    after = {r.id: r for r in filled.retrieve([pid_of(k) for k in range(N)], with_vectors=True)}
    for k in range(N):
        old, new = before[pid_of(k)], after[pid_of(k)]
        assert new.payload == old.payload
        np.testing.assert_allclose(new.vectors["a"], old.vectors["a"], atol=1e-7)
        np.testing.assert_allclose(new.vectors["b"], vecs["b"][k], atol=1e-6)
    assert filled.stats()["vectors"] == {"a": {"dim": 8, "points": N}, "b": {"dim": 16, "points": N}}
    hits = filled.search("b", vecs["b"][3], limit=3)
    assert hits[0].id == pid_of(3)
    with pytest.raises(InvalidInputError, match="already exists with dimension 16, not 32"):
        filled.ensure_vectors({"b": 32})


def test_data_persists_across_close_and_reopen(tmp_path: Path, vecs: dict[str, np.ndarray]) -> None:
    folder = tmp_path / "index"
    with EdgeStore(folder) as first:
        fill(first, vecs, ("a", "b"))
        query = vecs["a"][11]
        hits = first.search("a", query, limit=8, filter=SearchFilter(dataset="bach"))
        stats = first.stats()
    with EdgeStore(folder) as again:
        assert again.vectors() == DIMS
        assert again.count() == N
        assert again.stats() == stats
        assert again.search("a", query, limit=8, filter=SearchFilter(dataset="bach")) == hits
        again.ensure_vectors({"c": 4})
    with open_store(path=folder) as third:
        assert third.vectors() == {**DIMS, "c": 4}


def test_a_second_opener_in_this_process_is_refused_until_close(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    first = EdgeStore(folder)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}") as info:
        EdgeStore(folder)
    assert "\n" not in str(info.value)
    first.close()
    with EdgeStore(folder) as second:
        assert second.count() == 0


def test_another_process_is_told_who_owns_the_index(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    owner_code = (
        "import sys; from histo.store import EdgeStore; s = EdgeStore(sys.argv[1]); "
        "s.ensure_vectors({'a': 2}); print('ready', flush=True); sys.stdin.read(); s.close()"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError) as info:
            EdgeStore(folder)
        message = str(info.value)
        assert (
            f"pid {owner.pid}" in message and "histocli serve" in message and "HISTO_QDRANT__URL" in message
        )
        assert "\n" not in message
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        assert owner.wait(timeout=30) == 0
    with EdgeStore(folder) as after:  # the owner is gone: the folder opens, with its data
        assert after.vectors() == {"a": 2}


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": "gone", "command": "histocli serve"})
    )
    with EdgeStore(folder) as store:
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert store.count() == 0


def test_stats_count_points_vectors_datasets_and_labels(
    filled: EdgeStore, vecs: dict[str, np.ndarray]
) -> None:
    filled.ensure_vectors({"b": 16})
    filled.upsert(Point(pid_of(k), {"b": vecs["b"][k]}) for k in range(0, N, 5))
    payloads = [payload_of(k) for k in range(N)]
    by_label: dict[str, Counter[str]] = {}
    for p in payloads:
        by_label.setdefault(p["dataset"], Counter())[p["label"]] += 1
    assert filled.stats() == {
        "collection": "histo",
        "quantization": "int8",
        "points": N,
        "vectors": {"a": {"dim": 8, "points": N}, "b": {"dim": 16, "points": N // 5}},
        "datasets": dict(sorted(Counter(p["dataset"] for p in payloads).items())),
        "labels": {ds: dict(sorted(c.items())) for ds, c in sorted(by_label.items())},
        "layouts": {ds: {} for ds in sorted(by_label)},  # these points record no layout
        "artifacts": {"a": {}, "b": {}},  # nor the artifacts that made them
    }


def test_retrieve_keeps_the_order_asked_and_leaves_unknown_ids_out(filled: EdgeStore) -> None:
    unknown = str(uuid.uuid4())
    ids: list[str | uuid.UUID] = [pid_of(9), unknown, pid_of(3), uuid.UUID(pid_of(5))]
    records = filled.retrieve(ids, with_vectors=["a"])
    assert [r.id for r in records] == [pid_of(9), pid_of(3), pid_of(5)]
    assert all(set(r.vectors) == {"a"} and len(r.vectors["a"]) == 8 for r in records)
    assert filled.retrieve([pid_of(9)])[0].vectors == {}
    assert filled.retrieve([]) == []


def test_drop_empties_the_index_and_it_can_be_rebuilt(filled: EdgeStore, vecs: dict[str, np.ndarray]) -> None:
    filled.drop()
    assert filled.count() == 0 and filled.vectors() == {}
    with pytest.raises(UnknownNameError, match="no vectors yet"):
        filled.search("a", vecs["a"][0])
    fill(filled, vecs)
    assert filled.count() == N


def test_payload_indexes_exist_on_the_filter_fields(filled: EdgeStore) -> None:
    shard = filled._shard
    assert shard is not None
    assert set(FILTER_FIELDS) <= set(shard.info().payload_schema)


def test_bad_input_says_what_is_wrong(filled: EdgeStore, vecs: dict[str, np.ndarray]) -> None:
    with pytest.raises(UnknownNameError, match="unknown vector 'nope'; choose one of: a"):
        filled.search("nope", vecs["a"][0])
    with pytest.raises(InvalidInputError, match=r"shape \(3,\), expected \(8,\)"):
        filled.search("a", [1.0, 0.0, 0.0])
    with pytest.raises(InvalidInputError, match="all zeros"):
        filled.search("a", np.zeros(8))
    with pytest.raises(InvalidInputError, match="not a UUID"):
        filled.retrieve(["tile-1"])
    with pytest.raises(UnknownNameError):
        filled.upsert([Point(pid_of(0), {"zz": [1.0, 2.0]})])
    with pytest.raises(InvalidInputError, match="positive integer"):
        filled.search("a", vecs["a"][0], limit=0)
    with pytest.raises(InvalidInputError, match="must be a string"):
        filled.upsert([Point(pid_of(0), {}, {"label": 3})])
    for bad in (
        {"dataset": ""},
        {"split": 3},
        {"labels": "Benign"},
        {"labels": ("Benign", "")},
        {"exclude_image_ids": (None,)},
    ):
        with pytest.raises(InvalidInputError):
            SearchFilter(**bad)
    assert SearchFilter(labels=["a", "b", "a"]).labels == ("a", "b")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="collection name"):
        EdgeStore(Path("/tmp/unused"), collection="../up")
    filled.close()
    with pytest.raises(InvalidInputError, match="closed"):
        filled.count()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_leaves_the_parents_shard_and_lock_alone(filled: EdgeStore) -> None:
    child = os.fork()
    if child == 0:  # e.g. a DataLoader worker that inherited the store object
        code = 0
        try:
            filled.count()
            code = 1  # must refuse: the engine's threads did not survive the fork
        except StoreUnavailableError:
            filled.close()  # and closing the copy must not release the parent's lock
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert filled.count() == N
    with pytest.raises(StoreLockedError):
        EdgeStore(filled.path)
