"""Histology augmentations: view shapes, determinism, HED stain jitter, rotations, evaluation transform."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from histo.encoders.transforms import (
    HED_FROM_RGB,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RGB_FROM_HED,
    HEDJitter,
    RandomRotate90,
    eval_transform,
    hed_to_rgb,
    local_size_for,
    multicrop_transform,
    rgb_to_hed,
    two_view_transform,
    view_transform,
)
from histo.errors import InvalidInputError
from tests.helpers import tissue_array


@pytest.fixture
def tile() -> np.ndarray:
    return tissue_array(80, 72, seed=3)


@pytest.mark.parametrize("as_pil", [False, True])
def test_two_views_have_the_input_size_and_float_dtype(tile: np.ndarray, as_pil: bool) -> None:
    image = Image.fromarray(tile) if as_pil else tile
    views = two_view_transform(48)(image)
    assert len(views) == 2
    for view in views:
        assert view.shape == (3, 48, 48)
        assert view.dtype == torch.float32
        assert torch.isfinite(view).all()
    assert not torch.equal(views[0], views[1])


def test_multicrop_gives_global_then_local_views(tile: np.ndarray) -> None:
    views = multicrop_transform(64, n_global=2, n_local=3)(tile)
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 2 + [(3, 27, 27)] * 3
    assert local_size_for(224) == 96
    explicit = multicrop_transform(64, local_size=20, n_global=2, n_local=6)(tile)
    assert [v.shape[-1] for v in explicit] == [64, 64] + [20] * 6


def test_views_are_deterministic_under_a_fixed_torch_seed(tile: np.ndarray) -> None:
    transform = two_view_transform(40)
    torch.manual_seed(7)
    first = transform(tile)
    torch.manual_seed(7)
    again = transform(tile)
    torch.manual_seed(8)
    other = transform(tile)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_ruifrok_matrix_round_trips_and_separates_stains() -> None:
    assert torch.allclose(HED_FROM_RGB @ RGB_FROM_HED, torch.eye(3), atol=1e-5)
    # A pixel stained by haematoxylin alone deconvolves to haematoxylin alone.
    od = 0.8 * RGB_FROM_HED[0]
    rgb = torch.exp(-od).view(3, 1, 1)
    hed = rgb_to_hed(rgb).flatten()
    assert hed[0] == pytest.approx(0.8, abs=1e-4)
    assert hed[1:].abs().max() < 1e-4


def test_hed_jitter_with_zero_strength_is_identity() -> None:
    torch.manual_seed(0)
    rgb = torch.rand(3, 32, 32)
    assert torch.allclose(hed_to_rgb(rgb_to_hed(rgb)), rgb, atol=1e-4)
    assert torch.allclose(HEDJitter(0.0, 0.0)(rgb), rgb, atol=1e-4)


def test_hed_jitter_changes_colour_within_range() -> None:
    torch.manual_seed(0)
    rgb = torch.from_numpy(tissue_array(16, 16)).permute(2, 0, 1).float() / 255
    jittered = HEDJitter(0.2, 0.2)(rgb)
    assert jittered.shape == rgb.shape
    assert float(jittered.min()) >= 0.0 and float(jittered.max()) <= 1.0
    assert (jittered - rgb).abs().max() > 0.01
    with pytest.raises(InvalidInputError):
        HEDJitter(-0.1, 0.0)


def test_zero_strength_view_has_no_colour_change() -> None:
    flat = np.full((32, 32, 3), (200, 120, 170), dtype=np.uint8)
    view = view_transform(32, strength=0.0, scale=(1.0, 1.0), blur_p=0.0, jpeg_p=0.0)(flat)
    expected = (torch.tensor([200, 120, 170]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    assert torch.allclose(view.mean(dim=(1, 2)), expected, atol=1e-3)


def test_separable_blur_matches_torchvision() -> None:
    from torchvision.transforms.v2 import functional as TF

    from histo.encoders.transforms import GaussianBlur

    torch.manual_seed(0)
    image = torch.rand(3, 40, 36)
    ours = GaussianBlur(9, sigma=(1.3, 1.3))(image)
    assert torch.allclose(ours, TF.gaussian_blur(image, [9, 9], [1.3, 1.3]), atol=1e-5)
    assert GaussianBlur(9, sigma=(1.0, 1.0))(torch.rand(3, 4, 4)).shape == (
        3,
        4,
        4,
    )  # smaller than the kernel
    with pytest.raises(InvalidInputError):
        GaussianBlur(4)


def test_rotations_cover_all_four_orientations() -> None:
    image = torch.arange(9, dtype=torch.float32).view(1, 3, 3)
    candidates = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    rotate = RandomRotate90()
    torch.manual_seed(0)
    seen = set()
    for _ in range(64):
        out = rotate(image)
        seen.add(next(k for k, c in enumerate(candidates) if torch.equal(out, c)))
    assert seen == {0, 1, 2, 3}


def test_eval_transform_resizes_and_normalises_only(tile: np.ndarray) -> None:
    transform = eval_transform(40)
    out = transform(tile)
    assert out.shape == (3, 40, 40) and out.dtype == torch.float32
    assert torch.equal(out, transform(Image.fromarray(tile)))
    assert torch.equal(out, transform(tile))  # no randomness
    square = tissue_array(40, 40)
    expected = (
        torch.from_numpy(square).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]
    ) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(eval_transform(40)(square), expected, atol=1e-5)
    custom = eval_transform(40, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(square)
    assert float(custom.min()) >= 0.0 and float(custom.max()) <= 1.0


def test_bad_inputs_say_how_to_fix(tile: np.ndarray) -> None:
    transform = two_view_transform(32)
    with pytest.raises(InvalidInputError, match="uint8"):
        transform(tile.astype(np.float32))
    with pytest.raises(InvalidInputError, match="H x W x 3"):
        transform(tile[..., 0])
    with pytest.raises(InvalidInputError, match="PIL"):
        transform("tile.png")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        view_transform(32, strength=-1)
    with pytest.raises(InvalidInputError):
        view_transform(32, scale=(0.5, 0.2))
    grey = Image.fromarray(tile[..., 0])
    assert [v.shape for v in transform(grey)] == [(3, 32, 32)] * 2


def test_transforms_pickle_for_dataloader_workers(tile: np.ndarray) -> None:
    for transform in (
        two_view_transform(32, asymmetric=True),
        multicrop_transform(32, n_local=2),
        eval_transform(32),
    ):
        clone = pickle.loads(pickle.dumps(transform))
        torch.manual_seed(1)
        a = transform(tile)
        torch.manual_seed(1)
        b = clone(tile)
        pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
        assert all(torch.equal(x, y) for x, y in pairs)


def test_jpeg_recompression_keeps_shape_and_degrades_with_quality() -> None:
    from histo.encoders.transforms import JPEGRecompress

    image = torch.from_numpy(tissue_array(32, 32)).permute(2, 0, 1).contiguous()
    high = JPEGRecompress((100, 100))(image)
    low = JPEGRecompress((5, 5))(image)
    assert high.shape == low.shape == image.shape and high.dtype == torch.uint8
    error_high = (high.float() - image.float()).abs().mean()
    error_low = (low.float() - image.float()).abs().mean()
    assert error_high < error_low
    with pytest.raises(InvalidInputError):
        JPEGRecompress((0, 100))
