"""Each SSL method trains one short epoch end to end on synthetic data (``pytest -m slow``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histo.data.synth import write_synthetic
from histo.embedding import Embedder
from histo.encoders.registry import names
from histo.training import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bach(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bach")
    write_synthetic("bach", root, slides=4, tiles_per_slide=8, seed=3)
    return root


@pytest.mark.parametrize("method", names(kind="ssl"))
def test_one_epoch_end_to_end(bach: Path, tmp_path: Path, method: str) -> None:
    config = TrainConfig(
        method=method,
        data=bach,
        layout="bach",
        home=tmp_path,
        epochs=1,
        batch_size=8,
        input_size=64,
        num_workers=0,
        progress=False,
    )
    embedder = Embedder.from_artifact(train(config))
    record = embedder.meta.training
    assert record["epochs"] == 1 and record["steps"] >= 2 and np.isfinite(record["final_loss"])
    assert record["val_knn_acc"] is None or 0.0 <= record["val_knn_acc"] <= 1.0
    tiles = np.random.default_rng(0).integers(0, 255, size=(3, 224, 224, 3), dtype=np.uint8)
    vectors = embedder.embed(tiles)
    assert vectors.shape == (3, embedder.dim) and np.isfinite(vectors).all()
