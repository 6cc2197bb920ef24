"""The training loop around the methods: tile cache, monitor split, hardware choice, artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tile_cache import load_tile_set
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.tile_datasets import label_indices, monitor_split
from histo.errors import InvalidInputError
from histo.training import TrainConfig, hardware, train


@pytest.fixture(scope="module")
def bach(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bach")
    write_synthetic("bach", root, slides=5, tiles_per_slide=4, seed=1)
    return root


def test_tile_cache_is_built_once_and_reused(bach: Path, tmp_path: Path) -> None:
    records = scan_dataset(bach, "bach").records
    first, problems = load_tile_set(records, TilingConfig(), 10**8, tmp_path, progress=False)
    assert problems == [] and len(first) == 5 * 4 and first.pixels.shape == (20, 224, 224, 3)
    again, _ = load_tile_set(records, TilingConfig(), 10**8, tmp_path, progress=False)
    assert np.array_equal(np.asarray(first.pixels), np.asarray(again.pixels))
    assert len(list(tmp_path.iterdir())) == 1
    load_tile_set(records, TilingConfig(tile_size=112), 10**8, tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 2  # another tiling, another cache


def test_monitor_split_holds_out_whole_groups(bach: Path, tmp_path: Path) -> None:
    tiles, _ = load_tile_set(
        scan_dataset(bach, "bach").records, TilingConfig(), 10**8, tmp_path, progress=False
    )
    train_idx, val_idx = monitor_split(tiles, seed=0)
    assert len(train_idx) + len(val_idx) == len(tiles) and len(val_idx) > 0
    assert not {tiles.groups[i] for i in train_idx} & {tiles.groups[i] for i in val_idx}
    assert set(label_indices(tiles).tolist()) == {0, 1, 2, 3}


def test_hardware_falls_back_to_cpu() -> None:
    chosen = hardware("auto", "auto")
    assert chosen["precision"] in ("32-true", "bf16-mixed")
    if chosen["accelerator"] == "cpu":
        with pytest.raises(InvalidInputError, match="no GPU"):
            hardware("4", "auto")


def test_train_writes_a_usable_artifact(bach: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        method="simclr",
        data=bach,
        dataset="bach",
        home=tmp_path,
        epochs=1,
        batch_size=8,
        input_size=32,
        num_workers=0,
        progress=False,
    )
    folder = train(config)
    embedder = Embedder.from_artifact(folder)
    meta = embedder.meta
    assert (meta.method, meta.architecture, meta.input_size, meta.embedding_dim) == (
        "simclr",
        "resnet18",
        32,
        512,
    )
    assert meta.data["tiles"] == 20 and meta.training["steps"] >= 1
    assert np.isfinite(meta.training["final_loss"])
    assert (tmp_path / "checkpoints" / "simclr" / "last.ckpt").is_file()
    assert any((tmp_path / "logs" / "train").rglob("metrics.csv"))
    vectors = embedder.embed(np.zeros((2, 224, 224, 3), np.uint8) + 128)
    assert vectors.shape == (2, 512)


def test_baselines_cannot_be_trained(bach: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="baseline"):
        train(TrainConfig(method="colorhist", data=bach, dataset="bach", home=tmp_path))
