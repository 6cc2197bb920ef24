"""Histology augmentations: the one place that defines them (training views and evaluation).

A view is: random resized crop, horizontal and vertical flips, a random multiple of 90° (a tile has
no up), stain jitter in HED space, mild colour jitter, Gaussian blur, JPEG re-compression (Pillow), and
normalisation. Everything draws from torch's global generator, so ``torch.manual_seed`` makes a
view reproducible (also inside DataLoader workers, which seed torch per worker).

Stain jitter (Tellez et al., "Quantifying the effects of data augmentation and stain color
normalization in convolutional neural networks for computational pathology", MedIA 2019, "HED
light"): colour deconvolution with the Ruifrok-Johnston matrix (Ruifrok & Johnston, Anal. Quant.
Cytol. Histol. 2001) into haematoxylin / eosin / DAB optical densities (natural log, the units of
scikit-image's ``rgb2hed`` before 0.16 that the paper used; newer scikit-image divides them by
ln 1e6), a per-channel scale ``alpha ~ U(1 - s, 1 + s)`` and shift ``beta ~ U(-b, b)`` with
s = b = 0.05, and recomposition. Densities are not clipped, so zero strength is the identity.

Views take a PIL image, an ``H x W x 3`` uint8 numpy array or a ``3 x H x W`` uint8 tensor and give
float ``3 x size x size`` tensors normalised with ``mean`` / ``std`` (ImageNet statistics unless an
artifact says otherwise).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as nn_functional
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from histo.errors import InvalidInputError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB (rows), unit length.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
RGB_FROM_HED: Tensor = (_RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)).float()
HED_FROM_RGB: Tensor = torch.linalg.inv(RGB_FROM_HED.double()).float()
_MIN_INTENSITY = 1e-6

ImageInput = Image.Image | np.ndarray | Tensor


def to_uint8_chw(image: ImageInput) -> Tensor:
    """A ``3 x H x W`` uint8 tensor from a PIL image, ``H x W x 3`` uint8 array or such a tensor."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return TF.pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(
                f"expected an H x W x 3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}; "
                "convert with np.asarray(pil_image.convert('RGB'))"
            )
        if not image.flags.writeable:  # e.g. np.asarray(pil_image); torch wants writable memory
            image = image.copy()
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise InvalidInputError(
                f"expected a 3 x H x W uint8 tensor, got shape {tuple(image.shape)} dtype {image.dtype}; "
                "pass the RGB image as PIL or uint8 numpy instead"
            )
        return image.as_subclass(Tensor)
    raise InvalidInputError(
        f"cannot augment a {type(image).__name__}; pass a PIL image or an H x W x 3 uint8 numpy array"
    )


def rgb_to_hed(rgb: Tensor) -> Tensor:
    """``3 x H x W`` RGB in [0, 1] to H, E, DAB optical densities (natural log, unclipped)."""
    od = -rgb.clamp_min(_MIN_INTENSITY).log()
    return torch.einsum("chw,cd->dhw", od, HED_FROM_RGB.to(rgb.dtype))


def hed_to_rgb(hed: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hed`, clamped to [0, 1]."""
    od = torch.einsum("dhw,dc->chw", hed, RGB_FROM_HED.to(hed.dtype))
    return (-od).exp().clamp(0.0, 1.0)


class HEDJitter:
    """Per-channel scale ``U(1 - scale, 1 + scale)`` and shift ``U(-shift, shift)`` in HED space."""

    def __init__(self, scale: float = 0.05, shift: float = 0.05) -> None:
        if scale < 0 or shift < 0:
            raise InvalidInputError(f"HED jitter scale {scale} and shift {shift} must be >= 0")
        self.scale = scale
        self.shift = shift

    def __call__(self, rgb: Tensor) -> Tensor:
        alpha = 1.0 + (torch.rand(3) * 2 - 1) * self.scale
        beta = (torch.rand(3) * 2 - 1) * self.shift
        hed = rgb_to_hed(rgb)
        hed = hed * alpha.to(hed)[:, None, None] + beta.to(hed)[:, None, None]
        return hed_to_rgb(hed)

    def __repr__(self) -> str:
        return f"HEDJitter(scale={self.scale}, shift={self.shift})"


class JPEGRecompress:
    """Encode and decode as JPEG at a quality drawn uniformly from ``quality`` (inclusive), via Pillow.

    torchvision 0.29 deprecates its image codecs (``v2.JPEG`` included), so Pillow does the work.
    """

    def __init__(self, quality: tuple[int, int] = (50, 100)) -> None:
        if not 1 <= quality[0] <= quality[1] <= 100:
            raise InvalidInputError(f"JPEG quality range {quality} must satisfy 1 <= min <= max <= 100")
        self.quality = (int(quality[0]), int(quality[1]))

    def __call__(self, image: Tensor) -> Tensor:
        """``3 x H x W`` uint8 in, the same out after one JPEG round trip."""
        q = int(torch.randint(self.quality[0], self.quality[1] + 1, (1,)).item())
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="JPEG", quality=q)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return TF.pil_to_tensor(decoded.convert("RGB"))

    def __repr__(self) -> str:
        return f"JPEGRecompress(quality={self.quality})"


class GaussianBlur:
    """Gaussian blur with ``sigma ~ U(sigma_min, sigma_max)``, as two 1-D passes (reflect padding).

    Separable, so a 23-tap kernel at 224 px costs about a tenth of torchvision's 2-D ``GaussianBlur``.
    """

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise InvalidInputError(f"blur kernel size {kernel_size} must be odd and at least 3")
        if not 0 < sigma[0] <= sigma[1]:
            raise InvalidInputError(f"blur sigma range {sigma} must satisfy 0 < min <= max")
        self.kernel_size = kernel_size
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, image: Tensor) -> Tensor:
        """``3 x H x W`` float in, blurred out."""
        sigma = float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item())
        half = self.kernel_size // 2
        offsets = torch.arange(-half, half + 1, dtype=image.dtype, device=image.device)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()
        channels = image.shape[0]
        x = image.unsqueeze(0)
        pad_w, pad_h = min(half, image.shape[-1] - 1), min(half, image.shape[-2] - 1)
        x = nn_functional.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
        x = nn_functional.conv2d(
            x,
            kernel[half - pad_w : half + pad_w + 1].view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
            groups=channels,
        )
        x = nn_functional.pad(x, (0, 0, pad_h, pad_h), mode="reflect")
        x = nn_functional.conv2d(
            x,
            kernel[half - pad_h : half + pad_h + 1].view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
            groups=channels,
        )
        return x.squeeze(0)

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma})"


class RandomRotate90:
    """Rotate by 0, 90, 180 or 270 degrees, uniformly."""

    def __call__(self, image: Tensor) -> Tensor:
        k = int(torch.randint(0, 4, (1,)).item())
        return torch.rot90(image, k, dims=(-2, -1)) if k else image

    def __repr__(self) -> str:
        return "RandomRotate90()"


def _blur_kernel(size: int) -> int:
    """An odd kernel of about 10 % of the view size (SimCLR's choice), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


class ViewTransform:
    """One augmented view (see the module docstring); built by :func:`view_transform`."""

    def __init__(
        self,
        input_size: int,
        strength: float = 1.0,
        scale: tuple[float, float] = (0.08, 1.0),
        hed_scale: float = 0.05,
        hed_shift: float = 0.05,
        colour_p: float = 0.8,
        blur_p: float = 0.5,
        jpeg_p: float = 0.5,
        jpeg_quality: tuple[int, int] = (50, 100),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        blur_sigma: tuple[float, float] | None = None,
    ) -> None:
        if input_size < 8:
            raise InvalidInputError(f"view size {input_size} is too small; use at least 8 px")
        if strength < 0:
            raise InvalidInputError(f"augmentation strength {strength} must be >= 0 (1 is the default)")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise InvalidInputError(f"crop scale {scale} must satisfy 0 < min <= max <= 1")
        for name, p in (("colour_p", colour_p), ("blur_p", blur_p), ("jpeg_p", jpeg_p)):
            if not 0.0 <= p <= 1.0:
                raise InvalidInputError(f"{name}={p} is a probability; use a value in 0..1")
        self.input_size = input_size
        self.strength = strength
        self.colour_p = colour_p if strength > 0 else 0.0
        self.blur_p = blur_p
        self.jpeg_p = jpeg_p
        self.crop = v2.RandomResizedCrop(input_size, scale=scale, antialias=True)
        self.hflip = v2.RandomHorizontalFlip(0.5)
        self.vflip = v2.RandomVerticalFlip(0.5)
        self.rotate = RandomRotate90()
        self.hed = HEDJitter(hed_scale * strength, hed_shift * strength)
        self.colour = v2.ColorJitter(
            brightness=0.2 * strength, contrast=0.2 * strength, saturation=0.1 * strength, hue=0.02 * strength
        )
        # SimCLR's sigma range (0.1, 2.0) is meant for 224 px views; keep it relative to the view size.
        sigma = blur_sigma or (0.1, max(0.1, 2.0 * input_size / 224))
        self.blur = GaussianBlur(_blur_kernel(input_size), sigma=(float(sigma[0]), float(sigma[1])))
        self.jpeg = JPEGRecompress(jpeg_quality)
        self.normalise = v2.Normalize(mean=list(mean), std=list(std))

    def __call__(self, image: ImageInput) -> Tensor:
        x = to_uint8_chw(image)
        x = self.rotate(self.vflip(self.hflip(self.crop(x))))
        x = TF.to_dtype(x, torch.float32, scale=True)
        if self.hed.scale > 0 or self.hed.shift > 0:
            x = self.hed(x)
        if self.colour_p > 0 and torch.rand(1).item() < self.colour_p:
            x = self.colour(x)
        if self.blur_p > 0 and torch.rand(1).item() < self.blur_p:
            x = self.blur(x)
        if self.jpeg_p > 0 and torch.rand(1).item() < self.jpeg_p:
            x = TF.to_dtype(
                self.jpeg(TF.to_dtype(x.clamp(0, 1), torch.uint8, scale=True)), torch.float32, scale=True
            )
        return self.normalise(x).as_subclass(Tensor)

    def __repr__(self) -> str:
        return (
            f"ViewTransform(size={self.input_size}, strength={self.strength}, scale={self.crop.scale}, "
            f"{self.hed!r}, colour_p={self.colour_p}, blur_p={self.blur_p}, jpeg_p={self.jpeg_p})"
        )


def view_transform(input_size: int, strength: float = 1.0, **kwargs: Any) -> ViewTransform:
    """One histology view of ``input_size`` px; ``strength`` scales stain and colour jitter (0 = none).

    Keyword overrides: ``scale`` (crop area range), ``hed_scale``, ``hed_shift``, ``colour_p``,
    ``blur_p``, ``blur_sigma``, ``jpeg_p``, ``jpeg_quality``, ``mean``, ``std``.
    """
    return ViewTransform(input_size, strength, **kwargs)


class MultiViewTransform:
    """Several views of one image: ``transform(image) -> list[Tensor]``, one entry per view transform."""

    def __init__(self, transforms: Sequence[Callable[[Tensor], Tensor]]) -> None:
        if not transforms:
            raise InvalidInputError("a multi-view transform needs at least one view")
        self.transforms = list(transforms)

    def __call__(self, image: ImageInput) -> list[Tensor]:
        x = to_uint8_chw(image)
        return [t(x) for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"MultiViewTransform([\n  {inner}\n])"


def two_view_transform(
    input_size: int, strength: float = 1.0, asymmetric: bool = False, **kwargs: Any
) -> MultiViewTransform:
    """Two views (SimCLR, NNCLR, Barlow Twins).

    ``asymmetric`` follows solo-learn's ``augmentations/asymmetric.yaml`` (BYOL's recipe, used by its
    NNCLR and Barlow Twins configs): blur always on the first view and with probability 0.1 on the
    second (solarisation, the other asymmetric part, is left out: it has no meaning for H&E).
    """
    blur = (1.0, 0.1) if asymmetric else (0.5, 0.5)
    kwargs.pop("blur_p", None)
    return MultiViewTransform([view_transform(input_size, strength, blur_p=p, **kwargs) for p in blur])


def local_size_for(global_size: int) -> int:
    """The small-crop size that keeps SwAV's 96 / 224 ratio."""
    return max(8, round(global_size * 96 / 224))


def multicrop_transform(
    global_size: int,
    local_size: int | None = None,
    n_global: int = 2,
    n_local: int = 6,
    global_scale: tuple[float, float] = (0.14, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.14),
    strength: float = 1.0,
    **kwargs: Any,
) -> MultiViewTransform:
    """SwAV multi-crop (Caron et al. 2020): ``n_global`` large views, then ``n_local`` small ones.

    Defaults are the paper's 2 x 224 (scale 0.14-1) + 6 x 96 (scale 0.05-0.14); ``local_size``
    defaults to the same 96 / 224 ratio of ``global_size``.
    """
    if n_global < 1 or n_local < 0:
        raise InvalidInputError(f"multi-crop needs n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
    local = local_size if local_size is not None else local_size_for(global_size)
    views = [view_transform(global_size, strength, scale=global_scale, **kwargs) for _ in range(n_global)]
    views += [view_transform(local, strength, scale=local_scale, **kwargs) for _ in range(n_local)]
    return MultiViewTransform(views)


class EvalTransform:
    """Resize the shorter side to ``input_size``, centre crop (a no-op for square tiles), normalise."""

    def __init__(
        self, input_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        if input_size < 8:
            raise InvalidInputError(f"input size {input_size} is too small; use at least 8 px")
        self.input_size = input_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize = v2.Resize(input_size, antialias=True)
        self.crop = v2.CenterCrop(input_size)
        self.normalise = v2.Normalize(mean=list(self.mean), std=list(self.std))

    def __call__(self, image: ImageInput) -> Tensor:
        x = to_uint8_chw(image)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = self.crop(self.resize(x))
        return self.normalise(TF.to_dtype(x, torch.float32, scale=True)).as_subclass(Tensor)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.input_size}, mean={self.mean}, std={self.std})"


def eval_transform(
    input_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> EvalTransform:
    """The deterministic preprocessing of embedding and evaluation: resize + normalise only."""
    return EvalTransform(input_size, mean, std)
