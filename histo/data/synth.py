"""Procedural synthetic H&E data sets laid out exactly like BACH, BRACS and CRC (DESIGN.md §6).

Labelled real histology cannot be downloaded here, so ``write_synthetic`` renders stand-ins that
the real adapters read unchanged. Only morphology depends on the class (``CLASS_TABLES``); stain,
blur, noise and illumination are drawn per synthetic slide, and every slide has one image of
every class, so colour says nothing about the class. Numbers measured on these images are
*synthetic*: they check the pipeline, they do not predict real-data performance.

``colour_features``, ``morphology_features`` and ``cross_group_knn`` measure that promise: a
colour histogram must retrieve at about chance across slides, a crude nuclear morphology feature
well above it (``benchmarks/synth_signal.py``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from histo.data.datasets.base import SLIDE_MAP_NAME, SYNTHETIC_MARKER
from histo.data.synth_render import E_REF, H_REF, ClassMorphology, SlideStain, render_rgb
from histo.data.tiling import TilingConfig, grid_boxes
from histo.data.tissue import is_tissue, tissue_fraction
from histo.errors import InvalidInputError

__all__ = [
    "CLASS_TABLES",
    "SYNTH_DATASETS",
    "ClassMorphology",
    "SlideStain",
    "SynthSummary",
    "colour_features",
    "contact_sheet",
    "cross_group_knn",
    "morphology_features",
    "render_image",
    "render_tile",
    "slide_stain",
    "write_synthetic",
]

SYNTH_DATASETS: tuple[str, ...] = ("bach", "bracs", "crc")
MIN_TILE_TISSUE = 0.65  # our own bar per tile (<= ~35 % glass or lumen); the tiler needs 0.5

# Breast (BACH, BRACS) and colon (CRC) tissue; each class changes a few knobs of its neighbour,
# and the per-field randomness in the renderer makes neighbouring classes overlap.
# fmt: off
_BREAST = ClassMorphology(
    nucleus_radius=4.2, pleomorphism=0.12, elongation=1.3, hyperchromasia=1.0, vesicular=0.0,
    packing=0.42, gland_density=3.0, gland_radius=38.0, gland_elongation=1.25, gland_irregularity=0.2,
    lumen_ratio=0.45, cribriform=0.0, goblet=0.0, polarity=0.8, cleft=0.0, myoepithelium=1.0,
    stroma_cells=25.0, lymphocytes=3.0, scattered_cells=0.0, fibre_period=8.0, fibre_waviness=0.4,
)
_BENIGN = replace(  # more, compressed and elongated glands in a cellular stroma
    _BREAST, nucleus_radius=4.8, pleomorphism=0.16, packing=0.35, gland_density=3.2, gland_elongation=2.2,
    gland_irregularity=0.35, lumen_ratio=0.3, polarity=0.6, stroma_cells=40.0, fibre_waviness=0.6,
)
_IN_SITU = replace(  # large ducts filled with atypical cells, punched-out lumina, intact basal layer
    _BREAST, nucleus_radius=5.8, pleomorphism=0.24, elongation=1.2, hyperchromasia=1.12, vesicular=0.25,
    packing=0.25, gland_density=1.15, gland_radius=70.0, gland_elongation=1.2, gland_irregularity=0.25,
    lumen_ratio=0.0, cribriform=2.5, polarity=0.2, myoepithelium=0.8,
)
_INVASIVE = replace(  # small ragged nests and single cells in stroma, no basal layer, retraction clefts
    _BREAST, nucleus_radius=6.6, pleomorphism=0.34, hyperchromasia=1.25, vesicular=0.3, packing=0.36,
    gland_density=6.0, gland_radius=20.0, gland_elongation=1.6, gland_irregularity=0.7, lumen_ratio=0.0,
    polarity=0.0, cleft=4.0, myoepithelium=0.0, stroma_cells=30.0, lymphocytes=8.0, scattered_cells=8.0,
    fibre_period=10.0, fibre_waviness=0.8,
)
_COLON = ClassMorphology(  # round crypts, basal elongated nuclei, goblet cells, cellular lamina propria
    nucleus_radius=3.8, pleomorphism=0.12, elongation=1.8, hyperchromasia=1.0, vesicular=0.0,
    packing=0.32, gland_density=4.5, gland_radius=36.0, gland_elongation=1.25, gland_irregularity=0.12,
    lumen_ratio=0.25, cribriform=0.0, goblet=10.0, polarity=0.9, cleft=0.0, myoepithelium=0.0,
    stroma_cells=12.0, lymphocytes=25.0, scattered_cells=0.0, fibre_period=7.0, fibre_waviness=0.9,
)

CLASS_TABLES: dict[str, dict[str, ClassMorphology]] = {
    "bach": {"Normal": _BREAST, "Benign": _BENIGN, "InSitu": _IN_SITU, "Invasive": _INVASIVE},
    "bracs": {
        "N": _BREAST,
        "PB": _BENIGN,
        "UDH": replace(  # hyperplastic ducts: streaming, mildly varied nuclei, slit-like secondary lumina
            _BREAST, nucleus_radius=4.9, pleomorphism=0.2, elongation=1.6, packing=0.34, gland_density=1.5,
            gland_radius=55.0, gland_irregularity=0.4, lumen_ratio=0.2, cribriform=2.0, polarity=0.3,
        ),
        "FEA": replace(  # dilated acini lined by a few layers of rounded, mildly atypical cells
            _BREAST, nucleus_radius=5.0, pleomorphism=0.15, elongation=1.15, hyperchromasia=1.05, packing=0.5,
            gland_density=2.6, gland_radius=45.0, lumen_ratio=0.6, polarity=0.6,
        ),
        "ADH": replace(  # monotonous cells with rigid cribriform spaces, smaller than DCIS
            _IN_SITU, nucleus_radius=5.3, pleomorphism=0.14, hyperchromasia=1.08, vesicular=0.1, packing=0.32,
            gland_density=1.3, gland_radius=64.0, lumen_ratio=0.1, cribriform=3.0, polarity=0.15,
        ),
        "DCIS": replace(_IN_SITU, nucleus_radius=6.0, pleomorphism=0.26, hyperchromasia=1.15),
        "IC": _INVASIVE,
    },
    "crc": {
        "normal": _COLON,
        "low_grade": replace(  # elongated irregular glands, pencil-shaped stratified nuclei, fewer goblets
            _COLON, nucleus_radius=4.4, pleomorphism=0.2, elongation=2.4, hyperchromasia=1.1, packing=0.34,
            gland_density=4.0, gland_radius=36.0, gland_elongation=2.2, gland_irregularity=0.45,
            lumen_ratio=0.2, goblet=2.0, polarity=0.8, stroma_cells=20.0, lymphocytes=15.0,
        ),
        "high_grade": replace(  # solid/cribriform sheets, large vesicular pleomorphic nuclei, budding cells
            _COLON, nucleus_radius=5.8, pleomorphism=0.3, elongation=1.3, hyperchromasia=1.2, vesicular=0.35,
            packing=0.28, gland_density=1.6, gland_radius=52.0, gland_elongation=1.4, gland_irregularity=0.6,
            lumen_ratio=0.1, cribriform=2.0, goblet=0.0, polarity=0.1, cleft=2.0, stroma_cells=30.0,
            lymphocytes=10.0, scattered_cells=4.0, fibre_period=9.0, fibre_waviness=0.6,
        ),
    },
}
# fmt: on

_BACH_DIRS = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}
_BRACS_DIRS = {
    "N": "0_N",
    "PB": "1_PB",
    "UDH": "2_UDH",
    "FEA": "3_FEA",
    "ADH": "4_ADH",
    "DCIS": "5_DCIS",
    "IC": "6_IC",
}
_CRC_DIRS = {"normal": "1_normal", "low_grade": "2_low_grade", "high_grade": "3_high_grade"}


@dataclass
class SynthSummary:
    """What ``write_synthetic`` wrote: slides, images, and tiles the default ``TilingConfig`` yields."""

    dataset: str
    root: Path
    slides: int
    images: int
    tiles: int


def _rng(seed: int, dataset: str, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, SYNTH_DATASETS.index(dataset), *stream])


def slide_stain(dataset: str, seed: int, slide: int) -> SlideStain:
    """The stain of one synthetic slide; it depends on the seed and slide, never on a class."""
    return SlideStain.draw(_rng(seed, dataset, slide, 0))


def render_image(
    dataset: str, label: str, seed: int, slide: int, size: tuple[int, int], tile_size: int = 224
) -> np.ndarray:
    """One class image (height, width) of one slide, every ``tile_size`` tile at least 65 % tissue."""
    morphology = _morphology(dataset, label)
    class_index = list(CLASS_TABLES[dataset]).index(label) + 1
    stain = slide_stain(dataset, seed, slide).jitter(_rng(seed, dataset, slide, class_index, 0))
    height, width = size
    for attempt in range(8):
        rgb = render_rgb(
            morphology,
            stain,
            (height, width),
            _rng(seed, dataset, slide, class_index, attempt + 1),
            0.8**attempt,
        )
        if _all_tiles_pass(rgb, tile_size):
            return rgb
    # Each retry shrinks lumina and fat by 20 %; in practice the first attempt always passes.
    raise RuntimeError(f"synthetic {dataset}/{label}, slide {slide}: no render with enough tissue per tile")


def render_tile(dataset: str, label: str, seed: int = 0, slide: int = 0, tile_size: int = 224) -> np.ndarray:
    """A single tile_size x tile_size field of one class on one slide."""
    return render_image(dataset, label, seed, slide, (tile_size, tile_size), tile_size)


def _all_tiles_pass(rgb: np.ndarray, tile_size: int) -> bool:
    height, width = rgb.shape[:2]
    for size in {tile_size, TilingConfig().tile_size}:
        for box in grid_boxes(width, height, size, size):
            tile = rgb[box.y : box.y + box.h, box.x : box.x + box.w]
            if tissue_fraction(tile) < MIN_TILE_TISSUE:
                return False
    return True


def _morphology(dataset: str, label: str) -> ClassMorphology:
    _check_dataset(dataset)
    table = CLASS_TABLES[dataset]
    if label not in table:
        raise InvalidInputError(f"unknown {dataset} class {label!r}; choose one of: {', '.join(table)}")
    return table[label]


def _check_dataset(dataset: str) -> None:
    if dataset not in SYNTH_DATASETS:
        raise InvalidInputError(
            f"unknown synthetic data set {dataset!r}; choose one of: {', '.join(SYNTH_DATASETS)}"
        )


def write_synthetic(
    dataset: str,
    out: Path,
    slides: int,
    tiles_per_slide: int,
    seed: int,
    tile_size: int = 224,
    class_folders: bool = False,
) -> SynthSummary:
    """Render a synthetic data set under ``out`` in the real layout (or, with ``class_folders``,
    as ``<label>/<slide>_<n>.png``: any lab's folder of class sub-folders), plus ``histo-slides.csv``."""
    _check_dataset(dataset)
    if slides < 1:
        raise InvalidInputError(f"slides must be at least 1 (got {slides}); pass --slides 1 or more")
    if tiles_per_slide < 1:
        raise InvalidInputError(f"tiles per slide must be at least 1 (got {tiles_per_slide}); pass 1 or more")
    if seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer (got {seed})")
    if tile_size < 16:
        raise InvalidInputError(f"tile size {tile_size} is too small; use at least 16 px")
    out = Path(out)
    _prepare_folder(out)
    labels = list(CLASS_TABLES[dataset])
    per_image = max(1, tiles_per_slide // len(labels))
    cols = min(per_image, 4)
    rows = math.ceil(per_image / cols)
    size = (rows * tile_size, cols * tile_size)
    splits = _bracs_splits(slides, seed)
    slide_rows: list[tuple[str, str, str]] = []
    images = tiles = 0
    for slide in range(slides):
        for n, label in enumerate(labels, start=1):
            rgb = render_image(dataset, label, seed, slide, size, tile_size)
            rel_path, slide_id, patient_id = _name(dataset, label, slide, n, splits, seed)
            if class_folders:
                rel_path = f"{label}/{slide_id or patient_id}_{n}.png"
            path = out / rel_path
            path.parent.mkdir(parents=True, exist_ok=True)
            _save(rgb, path)
            slide_rows.append((rel_path, slide_id, patient_id))
            images += 1
            tiles += _default_tile_count(rgb)
    with (out / SLIDE_MAP_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "slide_id", "patient_id"])
        writer.writerows(slide_rows)
    write_marker(out)
    return SynthSummary(dataset=dataset, root=out, slides=slides, images=images, tiles=tiles)


def write_marker(out: Path) -> None:
    """Mark ``out`` as synthetic, so reports on what is ingested from it say so."""
    (out / SYNTHETIC_MARKER).write_text("made by histocli data synth: synthetic H&E, not real tissue\n")


def _prepare_folder(out: Path) -> None:
    """Refuse a foreign non-empty folder; in our own earlier output, remove the images we wrote."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is a file; give a folder to write the synthetic data set to")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    slide_map = out / SLIDE_MAP_NAME
    if not slide_map.is_file():
        raise InvalidInputError(
            f"{out} is not empty and holds no earlier synthetic output; give an empty folder"
        )
    with slide_map.open(newline="") as handle:
        for row in csv.DictReader(handle):
            old = out / row["path"]
            if old.is_file() and old.resolve().is_relative_to(out.resolve()):
                old.unlink()


def _bracs_splits(slides: int, seed: int) -> list[str]:
    """Patient-level split per slide: ~70/15/15, each split non-empty from 3 slides on."""
    if slides < 3:
        return ["train"] * slides
    small = max(1, round(0.15 * slides))
    order = _rng(seed, "bracs", 10**6).permutation(slides)
    splits = ["train"] * slides
    for i in order[:small]:
        splits[i] = "val"
    for i in order[small : 2 * small]:
        splits[i] = "test"
    return splits


def _name(dataset: str, label: str, slide: int, n: int, splits: list[str], seed: int) -> tuple[str, str, str]:
    """(relative path, slide id, patient id) of one image, as the real data set names it."""
    if dataset == "bach":
        path = f"ICIAR2018_BACH_Challenge/Photos/{label}/{_BACH_DIRS[label]}{slide + 1:03d}.tif"
        return path, f"synth_slide_{slide:03d}", ""
    if dataset == "bracs":
        wsi = 1000 + slide
        path = f"BRACS_RoI/latest_version/{splits[slide]}/{_BRACS_DIRS[label]}/BRACS_{wsi}_{label}_{n}.png"
        return path, f"BRACS_{wsi}", ""
    pid = slide + 1
    x, y = (int(v) for v in _rng(seed, dataset, slide, 10**6 + n).integers(0, 40, 2) * 1000)
    name = f"Grade{n}_Patient_{pid:03d}_{x:06d}_{y:06d}.png"
    return f"fold_{slide % 3 + 1}/{_CRC_DIRS[label]}/{name}", "", f"Patient_{pid:03d}"


def _save(rgb: np.ndarray, path: Path) -> None:
    image = Image.fromarray(rgb, mode="RGB")
    buffer = io.BytesIO()
    if path.suffix == ".tif":
        image.save(buffer, format="TIFF")
    else:
        image.save(buffer, format="PNG", compress_level=3)
    path.write_bytes(buffer.getvalue())


def _default_tile_count(rgb: np.ndarray) -> int:
    """Tiles the default ``TilingConfig`` will yield from this image (same grid, same tissue test)."""
    config = TilingConfig()
    height, width = rgb.shape[:2]
    boxes = grid_boxes(width, height, config.tile_size, config.step)
    count = 0
    for box in boxes:
        tile = rgb[box.y : box.y + box.h, box.x : box.x + box.w]
        if tile.shape[:2] != (config.tile_size, config.tile_size):
            tile = np.asarray(
                Image.fromarray(tile).resize((config.tile_size,) * 2, Image.Resampling.BILINEAR)
            )
        count += is_tissue(tile, config.min_tissue)
    return count


def contact_sheet(
    dataset: str, out_png: Path, seed: int = 0, per_class: int = 6, tile_size: int = 224
) -> Path:
    """A PNG grid: one row per class (label at the row start), tiles from different slides across."""
    _check_dataset(dataset)
    if per_class < 1:
        raise InvalidInputError(f"per_class must be at least 1 (got {per_class})")
    labels = list(CLASS_TABLES[dataset])
    margin, gap = 130, 4
    sheet = Image.new(
        "RGB", (margin + per_class * (tile_size + gap), len(labels) * (tile_size + gap)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=18)
    for row, label in enumerate(labels):
        top = row * (tile_size + gap)
        draw.text((8, top + tile_size // 2 - 10), label, fill="black", font=font)
        for slide in range(per_class):
            tile = render_tile(dataset, label, seed, slide, tile_size)
            sheet.paste(Image.fromarray(tile), (margin + slide * (tile_size + gap), top))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png


# --- signal check: colour must not predict the class, morphology must ------------------------------

_STAINS = np.stack([H_REF, E_REF, np.cross(H_REF, E_REF) / np.linalg.norm(np.cross(H_REF, E_REF))])
_UNMIX = np.linalg.pinv(_STAINS)  # OD (rgb) -> concentrations (H, E, residual)


def colour_features(tiles: list[np.ndarray], bins: int = 8) -> np.ndarray:
    """Joint RGB histogram (bins^3), L1 normalised, square-rooted (Euclidean = Hellinger distance)."""
    rows = []
    for tile in tiles:
        q = (tile.reshape(-1, 3).astype(np.int32) * bins) // 256
        hist = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins**3).astype(np.float64)
        rows.append(np.sqrt(hist / hist.sum()))
    return np.array(rows)


def morphology_features(tiles: list[np.ndarray]) -> np.ndarray:
    """Per tile: nuclear count, mean area, area spread and elongation, from the deconvolved H channel.

    Colour deconvolution with the reference Ruifrok H and E vectors, a per-tile Otsu threshold on
    the smoothed haematoxylin map, and connected components (scipy.ndimage).
    """
    rows = []
    for tile in tiles:
        od = -np.log((tile.astype(np.float32) + 1.0) / 256.0)
        hema = ndimage.gaussian_filter((od.reshape(-1, 3) @ _UNMIX)[:, 0].reshape(tile.shape[:2]), 1.0)
        mask = hema > _otsu(hema)
        labels, _ = ndimage.label(mask)
        areas = np.bincount(labels.ravel())[1:].astype(np.float64)
        keep = areas >= 6
        areas = areas[keep] if keep.any() else np.array([1.0])
        rows.append(
            [np.log1p(keep.sum()), np.log(areas.mean()), areas.std() / areas.mean(), np.log(np.median(areas))]
        )
    return np.array(rows)


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total, grand = weight[-1], mean[-1]
    between = (grand * weight - total * mean) ** 2 / np.maximum(weight * (total - weight), 1e-9)
    return float(centres[int(np.argmax(between[:-1]))])


def cross_group_knn(
    features: np.ndarray, labels: list[str], groups: list[str], k: int = 5, standardise: bool = False
) -> float:
    """Leave-one-out k-NN accuracy (majority of k, ties to the nearer) with neighbours from other groups only.

    Euclidean distance, optionally on per-column z-scores (for features with mixed units).
    """
    x = np.asarray(features, dtype=np.float64)
    if standardise:
        x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    squared = (x * x).sum(axis=1)
    dist = squared[:, None] + squared[None, :] - 2 * x @ x.T
    group = np.array(groups)
    dist[group[:, None] == group[None, :]] = np.inf
    label = np.array(labels)
    correct = 0
    for i in range(len(x)):
        nearest = np.argsort(dist[i], kind="stable")[:k]
        nearest = nearest[np.isfinite(dist[i, nearest])]
        if len(nearest) == 0:
            continue
        votes: dict[str, float] = {}
        for rank, j in enumerate(nearest):
            votes[label[j]] = votes.get(label[j], 0.0) + 1.0 - rank * 1e-3
        correct += max(votes, key=lambda name: votes[name]) == label[i]
    return correct / len(x)
