"""The real-H&E near-duplicate task: its changes, and that it tells encoders apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.near_duplicates import CHANGES, change, queries, real_tiles, top1
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return real_tiles()


def test_the_index_is_every_tissue_tile_of_the_shipped_real_samples(tiles: np.ndarray) -> None:
    assert tiles.shape == (132, 224, 224, 3) and tiles.dtype == np.uint8


@pytest.mark.parametrize("how", CHANGES)
def test_each_change_keeps_the_tile_shape_and_changes_pixels(tiles: np.ndarray, how: str) -> None:
    tile = tiles[0]
    changed = change(tile, how, np.random.default_rng(0))
    assert changed.shape == tile.shape and changed.dtype == np.uint8
    assert not np.array_equal(changed, tile)
    if how == "rotate90":
        assert any(np.array_equal(changed, np.rot90(tile, k)) for k in (1, 2, 3))
    if how == "stain":  # colour moves, layout stays: the stain shift is per pixel
        assert np.corrcoef(changed[..., 0].ravel(), tile[..., 0].ravel())[0, 1] > 0.9
    with pytest.raises(ValueError, match="unknown change"):
        change(tile, "warp", np.random.default_rng(0))


def test_top1_tells_a_stain_blind_encoder_from_a_shape_blind_one(tiles: np.ndarray, tmp_path: Path) -> None:
    chosen, changed = queries(tiles, 12, seed=0)
    assert len(chosen) == 12 and all(len(batch) == 12 for batch in changed.values())
    colour = top1(
        Embedder.from_artifact(make_baseline_artifact("colorhist", tmp_path / "c")), tiles, chosen, changed
    )
    # a colour histogram ignores rotation (exactly) but is thrown off by a stain shift
    assert colour["rotation"] == 1.0 and colour["stain"] < 1.0
    assert set(colour) == {*CHANGES, "rotation", "stain", "all"} and 0 <= colour["all"] <= 1
