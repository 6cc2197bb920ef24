"""EmbedBatcher with a real encoder and real threads: concurrent callers share forward passes and
each gets exactly its own rows; one caller's bad tiles fail that caller only."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from histo.embed_batcher import Batching, EmbedBatcher
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import InvalidInputError

TILE = 32


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    folder = tmp_path_factory.mktemp("encoders")
    return Embedder.from_artifact(make_baseline_artifact("colorhist", folder / "colorhist", input_size=TILE))


def tiles(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, TILE, TILE, 3), dtype=np.uint8)


def concurrently(batcher: EmbedBatcher, inputs: list[np.ndarray]) -> list[np.ndarray | BaseException]:
    """Every input embedded by its own thread, all released at once."""
    results: list[np.ndarray | BaseException] = [np.empty(0)] * len(inputs)
    start = threading.Barrier(len(inputs))

    def call(i: int) -> None:
        start.wait()
        try:
            results[i] = batcher.embed(inputs[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_callers_share_forward_passes_and_get_their_own_rows(embedder: Embedder) -> None:
    inputs = [tiles(seed, 1 + seed % 3) for seed in range(12)]
    batcher = EmbedBatcher(embedder, Batching(max_batch=64, max_wait_ms=200))
    try:
        results = concurrently(batcher, inputs)
    finally:
        batcher.close()
    for given, got in zip(inputs, results, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, embedder.embed(given), atol=1e-6)
    assert batcher.requests == 12 and batcher.batches < 12


def test_max_batch_caps_a_forward_pass(embedder: Embedder) -> None:
    batcher = EmbedBatcher(embedder, Batching(max_batch=2, max_wait_ms=200))
    try:
        concurrently(batcher, [tiles(seed, 1) for seed in range(6)])
    finally:
        batcher.close()
    assert batcher.requests == 6 and batcher.batches >= 3


def test_bad_tiles_fail_only_their_caller(embedder: Embedder) -> None:
    good = [tiles(seed, 2) for seed in range(3)]
    bad = np.zeros((2, TILE, TILE), dtype=np.uint8)  # no colour channels
    batcher = EmbedBatcher(embedder, Batching(max_batch=64, max_wait_ms=200))
    try:
        results = concurrently(batcher, [*good, bad])
        after = batcher.embed(good[0])  # the worker lives on
    finally:
        batcher.close()
    assert isinstance(results[-1], BaseException)
    for given, got in zip(good, results[:-1], strict=True):
        assert isinstance(got, np.ndarray) and np.allclose(got, embedder.embed(given), atol=1e-6)
    np.testing.assert_allclose(after, embedder.embed(good[0]), atol=1e-6)


def test_closed_and_misconfigured(embedder: Embedder) -> None:
    batcher = EmbedBatcher(embedder)
    assert (batcher.dim, batcher.name) == (embedder.dim, embedder.name)
    batcher.close()
    with pytest.raises(InvalidInputError, match="closed"):
        batcher.embed(tiles(0, 1))
    for bad in ({"max_batch": 0}, {"max_wait_ms": -1.0}):
        with pytest.raises(InvalidInputError, match="max_batch >= 1"):
            Batching(**bad)  # type: ignore[arg-type]
