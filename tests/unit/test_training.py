"""The training loop around the methods: tile cache, monitor split, hardware choice, artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from histo import training
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tile_cache import load_tile_set
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.artifact import load_meta
from histo.encoders.tile_datasets import label_indices, monitor_split
from histo.errors import InvalidInputError
from histo.training import MIN_STEPS, TrainConfig, default_steps, hardware, train


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


def _small(bach: Path, home: Path, **options: Any) -> TrainConfig:
    """SimCLR on the 20-tile fixture at 32 px, in-process loading; ``options`` override."""
    defaults: dict[str, Any] = {"batch_size": 4, "input_size": 32, "num_workers": 0, "progress": False}
    return TrainConfig(method="simclr", data=bach, layout="bach", home=home, **(defaults | options))


def test_train_writes_a_usable_artifact(bach: Path, tmp_path: Path) -> None:
    config = _small(bach, tmp_path, epochs=1, batch_size=8)
    folder = train(config)
    embedder = Embedder.from_artifact(folder)
    meta = embedder.meta
    # the default start: ImageNet weights that ship offline, fed as they expect
    assert (meta.method, meta.architecture, meta.input_size, meta.embedding_dim) == (
        "simclr",
        "efficientnet_lite0",
        32,
        1280,
    )
    assert meta.mean == [127 / 255] * 3 and meta.training["init"] == "imagenet"
    assert meta.data["tiles"] == 20 and meta.training["steps"] >= 1
    assert np.isfinite(meta.training["final_loss"])
    assert (tmp_path / "checkpoints" / "simclr" / "last.ckpt").is_file()
    assert any((tmp_path / "logs" / "train").rglob("metrics.csv"))
    vectors = embedder.embed(np.zeros((2, 224, 224, 3), np.uint8) + 128)
    assert vectors.shape == (2, 1280)


def test_baselines_cannot_be_trained(bach: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="baseline"):
        train(TrainConfig(method="colorhist", data=bach, layout="bach", home=tmp_path))


def test_default_run_length_is_a_sensible_number_of_steps() -> None:
    assert default_steps(88, 64) == MIN_STEPS  # not 10 epochs of one step
    assert default_steps(290_000, 256) == 100 * (290_000 // 256)


def test_epochs_and_steps_set_the_run_and_the_schedule_spans_it(bach: Path, tmp_path: Path) -> None:
    by_epochs = load_meta(train(_small(bach, tmp_path / "a", epochs=2, init="random"))).training
    # 20 tiles, one slide of 4 held out for the kNN monitor: 16 training tiles, 4 steps an epoch
    assert (by_epochs["steps"], by_epochs["planned_steps"], by_epochs["run_length"]) == (8, 8, "epochs")
    by_steps = load_meta(train(_small(bach, tmp_path / "b", steps=5, init="random"))).training
    assert (by_steps["steps"], by_steps["run_length"], by_steps["init"]) == (5, "steps", "random")


def test_minutes_alone_train_for_the_budget_quietly(
    bach: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[float] = []
    real_probe = training.measure_steps_per_second

    def measure(*args: Any) -> float:
        measured.append(real_probe(*args))  # the real probe runs...
        return 1.0  # ...but the plan uses a fixed rate, so the step count does not depend on load

    monkeypatch.setattr(training, "measure_steps_per_second", measure)
    config = _small(bach, tmp_path, max_minutes=0.5, init="random", progress=True)
    record = load_meta(train(config)).training
    assert measured and measured[0] > 0
    # what is left of 30 s after setup, at 1 step/s, 85 % of it: far more than "10 epochs" of 4
    # steps would have been at the old default, and the schedule spans exactly the planned steps
    assert record["run_length"] == "minutes" and 10 <= record["planned_steps"] <= 26
    assert record["steps"] == record["planned_steps"] or record["seconds"] >= 0.5 * 60 * 0.8
    printed = capfd.readouterr()
    everything = printed.out + printed.err
    assert "training simclr" in printed.err and "step/s" in printed.err  # the one progress bar
    for noise in ("GPU available", "TPU available", "Tip:", "LOCAL_RANK", "UserWarning", "Epoch 0"):
        assert noise not in everything, noise
