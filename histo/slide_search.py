"""Slide search: each indexed slide keeps a mosaic of representative tiles; slides are ranked by
how well a query's tiles match their mosaics (Yottixel, Kalra et al. 2020; SISH, Chen et al. 2022).

* **Mosaic.** After a slide's tiles are indexed, its tile vectors of one encoder (the *mosaic
  encoder*, recorded in the payload as ``mosaic_encoder``) are clustered with k-means,
  k = ``MOSAIC_SHARE`` of its tiles clamped to ``MOSAIC_MIN``..``MOSAIC_MAX``, and the tile nearest
  each centroid gets the payload ``role = "mosaic"``. Slide search touches only these tiles.
* **Query.** An image or region is cut into tiles as any image query is (up to 64); an indexed
  slide queries with its own mosaic (its own slide, and its patient where known, are excluded).
* **Ranking rule (Yottixel's "median of minimum distances", as similarities).** Every query tile
  is searched among mosaic tiles (``SLIDE_CANDIDATES`` nearest). For each query tile, a slide's
  match is the best similarity of any of its mosaic tiles in that list; a slide absent from a
  full list gets that list's last (lowest) similarity — an upper bound of what it would reach —
  and from a list that was not full, -1 (none of its mosaic tiles passed the filter). A slide's
  score is the **median over query tiles** of its matches: a slide must resemble most of the
  query, not one tile of it. Ties go to the slide id. Each slide lists its best-matching tiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histo.data.records import Box
from histo.errors import InvalidInputError, NotFoundError, did_you_mean
from histo.query_image import QueryImage
from histo.store.base import MOSAIC_ROLE, Point, SearchFilter, VectorStore

MOSAIC_SHARE = 0.1
MOSAIC_MIN = 16
MOSAIC_MAX = 64
SLIDE_CANDIDATES = 256
DEFAULT_TILES_PER_SLIDE = 3


@dataclass(frozen=True, slots=True)
class SlideMatch:
    """One tile of a ranked slide: its id, similarity, payload and the query tile it matched."""

    id: str
    score: float
    payload: dict[str, Any]
    query_tile: int | None = None


@dataclass(frozen=True, slots=True)
class SlideHit:
    """A ranked slide: its id, score (median of per-query-tile best similarities), data set,
    label and patient where known, and its best-matching mosaic tiles, best first."""

    slide_id: str
    score: float
    dataset: str | None
    label: str | None
    patient_id: str | None
    tiles: list[SlideMatch] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SlideSearchResult:
    slides: list[SlideHit]
    encoder: str
    took_ms: float
    query_boxes: list[Box] = field(default_factory=list)
    #: For an image query: how it was searched (tiles of how many, how chosen, its µm/px).
    query_image: QueryImage | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``histocli search --slides --json``)."""
        return {
            "encoder": self.encoder,
            "took_ms": round(self.took_ms, 3),
            "query_image": self.query_image.as_dict() if self.query_image else None,
            "query_boxes": [dataclasses.asdict(b) for b in self.query_boxes],
            "slides": [dataclasses.asdict(s) for s in self.slides],
        }


# ------------------------------------------------------------------------------------------------
# Mosaics
# ------------------------------------------------------------------------------------------------


def mosaic_size(tiles: int) -> int:
    """How many mosaic tiles a slide of ``tiles`` indexed tiles keeps."""
    return min(tiles, max(MOSAIC_MIN, min(MOSAIC_MAX, round(MOSAIC_SHARE * tiles))))


def select_mosaic(vectors: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Indices of ``k`` representative rows: k-means on the (L2-normalised) vectors, then the row
    nearest each centroid. Deterministic for a seed."""
    from sklearn.cluster import KMeans

    count = len(vectors)
    if k >= count:
        return list(range(count))
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(unit)
    chosen: list[int] = []
    for cluster in range(k):
        members = np.flatnonzero(model.labels_ == cluster)
        if members.size == 0:
            continue
        distance = np.linalg.norm(unit[members] - model.cluster_centers_[cluster], axis=1)
        chosen.append(int(members[np.argmin(distance)]))
    return sorted(set(chosen))


def build_mosaics(
    store: VectorStore,
    encoder: str,
    dataset: str,
    slide_ids: Iterable[str],
    seed: int = 0,
    keep_encoder: bool = True,
) -> dict[str, int]:
    """Choose each slide's mosaic from its ``encoder`` vectors and mark it in the payloads (the
    previous mosaic's marks are removed). With ``keep_encoder`` a slide whose mosaic was chosen
    by another encoder that the index still holds keeps that encoder (ingesting a new encoder
    later must not change what slide search searches). Returns mosaic tiles per slide."""
    sizes: dict[str, int] = {}
    held = store.vectors()
    for slide_id in dict.fromkeys(slide_ids):
        flt = SearchFilter(dataset=dataset, slide_ids=(slide_id,))
        chooser = encoder
        if keep_encoder:
            earlier = {
                r.payload.get("mosaic_encoder")
                for r in store.scroll(SearchFilter(dataset=dataset, slide_ids=(slide_id,), mosaic_only=True))
            }
            earlier.discard(None)
            if len(earlier) == 1 and (name := str(earlier.pop())) in held:
                chooser = name
        records = [r for r in store.scroll(flt, with_vectors=[chooser]) if chooser in r.vectors]
        if not records:
            continue
        vectors = np.asarray([r.vectors[chooser] for r in records], dtype=np.float32)
        chosen = set(select_mosaic(vectors, mosaic_size(len(records)), seed))
        updates = []
        for index, record in enumerate(records):
            payload = {k: v for k, v in record.payload.items() if k not in ("role", "mosaic_encoder")}
            if index in chosen:
                payload |= {"role": MOSAIC_ROLE, "mosaic_encoder": chooser}
            if payload != record.payload:
                updates.append(Point(record.id, payload=payload))
        store.upsert(updates)
        sizes[slide_id] = len(chosen)
    return sizes


def slide_ids_of(store: VectorStore, dataset: str) -> list[str]:
    """The whole-slide images of ``dataset`` in the index (tiles with a pyramid ``level``)."""
    found = {
        r.payload["slide_id"]
        for r in store.scroll(SearchFilter(dataset=dataset))
        if "level" in r.payload and isinstance(r.payload.get("slide_id"), str)
    }
    return sorted(found)


@dataclass(frozen=True)
class Mosaic:
    """One indexed slide's mosaic vectors of one encoder, with its label and patient."""

    vectors: list[Any]
    label: str | None
    patient_id: str | None


def slide_mosaics(store: VectorStore, encoder: str, dataset: str) -> dict[str, Mosaic]:
    """Every slide of ``dataset`` that has a mosaic, with its ``encoder`` mosaic vectors."""
    found: dict[str, Mosaic] = {}
    for r in store.scroll(SearchFilter(dataset=dataset, mosaic_only=True), with_vectors=[encoder]):
        slide = r.payload.get("slide_id")
        if encoder not in r.vectors or not isinstance(slide, str):
            continue
        mosaic = found.setdefault(slide, Mosaic([], r.payload.get("label"), r.payload.get("patient_id")))
        mosaic.vectors.append(r.vectors[encoder])
    return dict(sorted(found.items()))


def unknown_slide(store: VectorStore, slide_id: str, encoder: str) -> NotFoundError:
    """The error for a slide without a mosaic of ``encoder`` vectors: the slides that have one
    (a near miss first), or how to index some."""
    slides = store.count_values("slide_id", SearchFilter(mosaic_only=True))
    if slide_id in slides:
        return NotFoundError(
            f"slide {slide_id!r} has no mosaic with {encoder!r} vectors; search it with the encoder that "
            f"chose its mosaic, or choose it anew: histocli index mosaics -d DATASET -e {encoder}"
        )
    if not slides:
        return NotFoundError(
            f"no slide {slide_id!r}: the index holds no whole-slide images; ingest some "
            "(histocli ingest DIR --layout slides)"
        )
    shown = ", ".join(list(slides)[:20]) + (f", and {len(slides) - 20} more" if len(slides) > 20 else "")
    return NotFoundError(
        f"no slide {slide_id!r} in the index{did_you_mean(slide_id, slides)}; its slides: {shown}"
    )


def slide_mosaic(store: VectorStore, encoder: str, slide_id: str) -> tuple[list[Any], dict[str, Any]]:
    """An indexed slide's mosaic vectors of ``encoder`` and one of its payloads; NotFoundError if
    the slide has no mosaic."""
    if not isinstance(slide_id, str) or not slide_id.strip():
        raise InvalidInputError(f"slide id must be a non-empty string, got {slide_id!r}")
    flt = SearchFilter(slide_ids=(slide_id,), mosaic_only=True)
    records = [r for r in store.scroll(flt, with_vectors=[encoder]) if encoder in r.vectors]
    if not records:
        raise unknown_slide(store, slide_id, encoder)
    return [r.vectors[encoder] for r in records], records[0].payload


# ------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------


def rank_slides(
    store: VectorStore,
    encoder: str,
    queries: Sequence[Any],
    flt: SearchFilter,
    top_k: int,
    tiles_per_slide: int = DEFAULT_TILES_PER_SLIDE,
    exact: bool = False,
    tiled: bool = True,
) -> list[SlideHit]:
    """Rank slides by the median of their best per-query-tile similarity (module docstring)."""
    if not queries:
        raise InvalidInputError("slide search needs at least one query tile")
    mosaic = dataclasses.replace(flt, mosaic_only=True)
    lists = [store.search(encoder, q, SLIDE_CANDIDATES, mosaic, exact=exact) for q in queries]
    best: list[dict[str, float]] = []
    matches: dict[str, list[SlideMatch]] = {}
    facts: dict[str, dict[str, Any]] = {}
    for t, hits in enumerate(lists):
        per_slide: dict[str, float] = {}
        for hit in hits:
            slide = hit.payload.get("slide_id")
            if not isinstance(slide, str):
                continue
            score = float(np.float32(hit.score))
            per_slide[slide] = max(per_slide.get(slide, -math.inf), score)
            matches.setdefault(slide, []).append(SlideMatch(hit.id, score, hit.payload, t if tiled else None))
            facts.setdefault(slide, hit.payload)
        best.append(per_slide)
    floors = [float(np.float32(h[-1].score)) if len(h) >= SLIDE_CANDIDATES else -1.0 for h in lists]
    ranked = []
    for slide in matches:
        scores = [per_slide.get(slide, floor) for per_slide, floor in zip(best, floors, strict=True)]
        payload = facts[slide]
        ranked.append(
            SlideHit(
                slide_id=slide,
                score=float(np.float32(np.median(scores))),
                dataset=payload.get("dataset"),
                label=payload.get("label"),
                patient_id=payload.get("patient_id"),
                tiles=_best_tiles(matches[slide], tiles_per_slide),
            )
        )
    ranked.sort(key=lambda s: (-s.score, s.slide_id))
    return ranked[:top_k]


def _best_tiles(found: list[SlideMatch], count: int) -> list[SlideMatch]:
    """A slide's best distinct tiles (a tile matched by several query tiles appears once)."""
    seen: dict[str, SlideMatch] = {}
    for match in sorted(found, key=lambda m: (-m.score, m.id)):
        seen.setdefault(match.id, match)
    return list(seen.values())[:count]


__all__ = [
    "DEFAULT_TILES_PER_SLIDE",
    "MOSAIC_MAX",
    "MOSAIC_MIN",
    "MOSAIC_SHARE",
    "SLIDE_CANDIDATES",
    "Mosaic",
    "SlideHit",
    "SlideMatch",
    "SlideSearchResult",
    "build_mosaics",
    "mosaic_size",
    "rank_slides",
    "select_mosaic",
    "slide_ids_of",
    "slide_mosaic",
    "slide_mosaics",
]
