"""Where in a slide a query matches: its thumbnail with every indexed tile coloured by similarity.

Every indexed tile of the slide (or image) gets the best cosine similarity any query tile reaches
against it; tiles are drawn on the thumbnail as filled boxes in a perceptually uniform colour map
(inferno, scaled from the slide's lowest to its highest similarity), the ``best`` most similar
outlined, with a colour bar. The thumbnail comes from the source file (``TileSource``): a slide's
own pyramid, or a downscaled photo.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from histo.data.records import Box
from histo.data.tile_source import TileSource
from histo.errors import InvalidInputError, NotFoundError, did_you_mean
from histo.store.base import SearchFilter, VectorStore

DEFAULT_SIZE = 1024
DEFAULT_BEST = 3
OUTLINE = "#00e5ff"


@dataclass(frozen=True, slots=True)
class Heatmap:
    """The rendered PNG, and the best boxes (level-0 pixels) with their similarities."""

    data: bytes
    media_type: str
    width: int
    height: int
    best: list[tuple[Box, float]]


def tile_similarities(
    store: VectorStore, encoder: str, slide_id: str, queries: Sequence[Any]
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The slide's tile payloads and, per tile, its best cosine similarity to any query vector."""
    if not isinstance(slide_id, str) or not slide_id.strip():
        raise InvalidInputError(f"slide id must be a non-empty string, got {slide_id!r}")
    records = [
        r
        for r in store.scroll(SearchFilter(slide_ids=(slide_id,)), with_vectors=[encoder])
        if encoder in r.vectors
    ]
    if not records:
        slides = store.count_values("slide_id")
        if slide_id not in slides:
            shown = ", ".join(list(slides)[:20]) or "none"
            raise NotFoundError(
                f"no slide {slide_id!r} in the index{did_you_mean(slide_id, slides)}; its slides: {shown}"
            )
        raise NotFoundError(
            f"slide {slide_id!r} has no tiles with {encoder!r} vectors; draw it with another encoder, or "
            f"ingest its data set with {encoder} (histocli ingest DIR ... -e {encoder})"
        )
    files = {(r.payload.get("dataset"), r.payload.get("path")) for r in records}
    if len(files) > 1:
        raise InvalidInputError(
            f"slide {slide_id!r} is {len(files)} image files in the index (RoIs or photos of one slide); "
            "a heatmap draws one whole-slide image: give the slide_id of an ingested slide file"
        )
    tiles = _unit(np.asarray([r.vectors[encoder] for r in records], dtype=np.float32))
    query = _unit(np.asarray(list(queries), dtype=np.float32))
    return [r.payload for r in records], (tiles @ query.T).max(axis=1)


def render_heatmap(
    source: TileSource,
    payloads: list[dict[str, Any]],
    scores: np.ndarray,
    title: str,
    size: int = DEFAULT_SIZE,
    best: int = DEFAULT_BEST,
) -> Heatmap:
    """The figure: thumbnail, coloured tile boxes, the ``best`` outlined, a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    thumb, scale = source.thumbnail(payloads[0], size)
    boxes = [Box(int(p["x"]), int(p["y"]), int(p["w"]), int(p["h"])) for p in payloads]
    low, high = float(scores.min()), float(scores.max())
    norm = matplotlib.colors.Normalize(vmin=low, vmax=high if high > low else low + 1e-6)
    cmap = matplotlib.colormaps["inferno"]
    fig, ax = plt.subplots(figsize=(8, 8 * thumb.height / max(1, thumb.width) + 0.6), dpi=110)
    ax.imshow(thumb)
    for box, score in zip(boxes, scores, strict=True):
        ax.add_patch(
            Rectangle(
                (box.x * scale, box.y * scale),
                box.w * scale,
                box.h * scale,
                color=cmap(norm(score)),
                alpha=0.6,
            )
        )
    order = np.argsort(-scores, kind="stable")[:best]
    for rank, index in enumerate(order, start=1):
        b = boxes[index]
        ax.add_patch(
            Rectangle(
                (b.x * scale, b.y * scale),
                b.w * scale,
                b.h * scale,
                fill=False,
                edgecolor=OUTLINE,
                linewidth=2,
            )
        )
        ax.annotate(str(rank), (b.x * scale, b.y * scale), color=OUTLINE, fontsize=9, va="bottom")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.colorbar(
        matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04, label="cosine similarity"
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    width, height = _png_size(buffer.getvalue())
    return Heatmap(
        buffer.getvalue(), "image/png", width, height, [(boxes[i], float(scores[i])) for i in order]
    )


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


__all__ = ["DEFAULT_BEST", "DEFAULT_SIZE", "Heatmap", "render_heatmap", "tile_similarities"]
