"""Quantized layouts (``IndexOptions``): settings, the engines' configs, and search that rescores."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models as qm

from histo.errors import InvalidInputError, UnknownNameError
from histo.settings import Settings
from histo.store import EdgeStore, Point, SearchFilter, ServerStore
from histo.store.base import DEFAULT_QUANTIZATION, IndexOptions, quantization_name
from histo.store.server import _quantization, _search_params

DIM = 512
POINTS = 6000  # 12 MB of float vectors: above the engine's indexing threshold, so optimize() quantizes


def clustered(points: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    rows = centres[rng.integers(0, 40, points)] + 0.7 * rng.standard_normal((points, DIM), np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build(path: Path, options: IndexOptions, data: np.ndarray) -> EdgeStore:
    store = EdgeStore(path, options=options)
    store.ensure_vectors({"v": DIM})
    ids = [str(uuid.UUID(int=k + 1)) for k in range(len(data))]
    for lo in range(0, len(data), 1000):
        store.upsert(
            Point(ids[k], {"v": data[k]}, {"dataset": "bach" if k % 2 else "crc"})
            for k in range(lo, min(len(data), lo + 1000))
        )
    store.optimize()
    return store


def test_options_refuse_unknown_layouts_and_odd_values() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown quantization 'pq'.*binary, int8, none, turbo4"):
        IndexOptions("pq")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="oversampling must be between 1 and 64"):
        IndexOptions(oversampling=0.5)
    with pytest.raises(InvalidInputError, match="payload_m"):
        IndexOptions(payload_m=0)


def test_settings_choose_the_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().qdrant.index_options() == IndexOptions(DEFAULT_QUANTIZATION)
    monkeypatch.setenv("HISTO_QDRANT__QUANTIZATION", "binary")
    monkeypatch.setenv("HISTO_QDRANT__OVERSAMPLING", "4")
    assert Settings().qdrant.index_options() == IndexOptions("binary", 4.0)
    monkeypatch.setenv("HISTO_QDRANT__QUANTIZATION", "int4")
    with pytest.raises(ValueError, match="'none', 'int8', 'turbo4' or 'binary'"):
        Settings()


@pytest.mark.parametrize("layout", ["int8", "turbo4"])
def test_quantized_search_rescores_to_the_exact_answer(tmp_path: Path, layout: str) -> None:
    """The compressed vectors pick the candidates; the float ones on disk give the final scores."""
    data = clustered(POINTS)
    with build(tmp_path / "index", IndexOptions(layout), data) as store:
        assert store.stats()["quantization"] == layout
        found, truth = [], []
        for k in range(0, POINTS, 150):
            for flt in (None, SearchFilter(dataset="bach")):
                approx = store.search("v", data[k], 10, flt)
                exact = {h.id: h.score for h in store.search("v", data[k], 10, flt, exact=True)}
                found.append({h.id for h in approx})
                truth.append(set(exact))
                for hit in approx:  # rescored: full-precision scores, not the quantized estimates
                    if hit.id in exact:
                        assert hit.score == pytest.approx(exact[hit.id], abs=1e-5)
        recall = np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=True)])
        assert recall >= 0.95


def test_binary_codes_cannot_tell_non_negative_vectors_apart(tmp_path: Path) -> None:
    """Why binary is not the default for ResNet features: every sign bit is 1 before centring."""
    data = np.abs(clustered(POINTS))
    centred = data - data.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    recalls = []
    for name, vectors in (("raw", data), ("centred", centred)):
        with build(tmp_path / name, IndexOptions("binary", oversampling=1.0), vectors) as store:
            hits = [
                (
                    {h.id for h in store.search("v", q, 10)},
                    {h.id for h in store.search("v", q, 10, exact=True)},
                )
                for q in vectors[::300]
            ]
        recalls.append(np.mean([len(a & b) / 10 for a, b in hits]))
    raw, centred_recall = recalls
    assert centred_recall > raw + 0.2


def test_a_layout_is_kept_by_the_index_not_the_opener(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, options=IndexOptions("none")) as store:
        store.ensure_vectors({"v": 8})
    with EdgeStore(tmp_path, options=IndexOptions("int8")) as store:
        assert store.stats()["quantization"] == "none"


def test_server_configs_match_the_embedded_ones() -> None:
    scalar = _quantization(IndexOptions("int8"))
    assert isinstance(scalar, qm.ScalarQuantization)
    assert scalar.scalar.type == qm.ScalarType.INT8 and scalar.scalar.memory == qm.Memory.PINNED
    assert isinstance(_quantization(IndexOptions("binary")), qm.BinaryQuantization)
    assert _quantization(IndexOptions("none")) is None
    for layout in ("none", "int8", "turbo4", "binary"):
        as_json = _quantization(IndexOptions(layout))  # type: ignore[arg-type]
        assert quantization_name(as_json.model_dump() if as_json else None) == layout
    params = _search_params(False, True, IndexOptions(oversampling=3.0))
    assert params.quantization is not None
    assert params.quantization.rescore is True and params.quantization.oversampling == 3.0
    assert params.acorn is not None and params.acorn.enable
    assert _search_params(True, True, IndexOptions()).exact is True


def test_local_mode_searches_a_quantized_layout_alike() -> None:
    """qdrant-client's local mode is brute force: the options pass through without a warning."""
    data = clustered(200)
    with ServerStore.in_memory(options=IndexOptions("int8")) as store:
        store.ensure_vectors({"v": DIM})
        store.upsert(Point(str(uuid.UUID(int=k + 1)), {"v": data[k]}) for k in range(200))
        hits = store.search("v", data[7], 3)
    assert hits[0].id == str(uuid.UUID(int=8)) and hits[0].score == pytest.approx(1.0, abs=1e-5)
