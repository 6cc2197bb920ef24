"""The evaluation protocol (DESIGN.md §5): leave-one-out retrieval over the index, per encoder.

Every labelled tile of the data set is a query (or a fixed-seed sample of ``max_queries`` of them
on large sets, and the report says so). Its candidates are all other tiles of the same data set
**except** those from the query's own image and, where the source records one, its own slide or
patient — otherwise an encoder (or a colour histogram) wins by recognising the slide's stain.
Ranking is exact cosine similarity over the stored vectors, so no approximate-search recall
loss enters the numbers. Metric definitions: ``histo.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from histo.errors import InvalidInputError
from histo.metrics import QueryResult, summarise
from histo.query_checks import require_dataset
from histo.store.base import SearchFilter, VectorStore

QUERY_BLOCK = 256


@dataclass
class IndexedTiles:
    """One encoder's vectors of one data set, with what the protocol needs of each payload."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]

    @property
    def labels(self) -> np.ndarray:
        return np.array([p.get("label", "") for p in self.payloads])

    @property
    def images(self) -> np.ndarray:
        return np.array([p.get("image_id", "") for p in self.payloads])

    @property
    def groups(self) -> np.ndarray:
        """Patient, else slide; empty where the source records neither."""
        return np.array([p.get("patient_id") or p.get("slide_id") or "" for p in self.payloads])


@dataclass
class EncoderResult:
    """Metrics of one encoder plus the raw ranking of a few queries (for the report's grid)."""

    summary: dict[str, Any]
    examples: list[dict[str, Any]] = field(default_factory=list)
    tiles: IndexedTiles | None = None


def load_tiles(store: VectorStore, dataset: str, encoder: str) -> IndexedTiles:
    """Every labelled tile of ``dataset`` that has the ``encoder`` vector."""
    ids, vectors, payloads = [], [], []
    for record in store.scroll(SearchFilter(dataset=dataset), with_vectors=[encoder]):
        if encoder in record.vectors and record.payload.get("label"):
            ids.append(record.id)
            vectors.append(record.vectors[encoder])
            payloads.append(record.payload)
    if not ids:  # an unknown data set, or one never embedded with this encoder
        return IndexedTiles([], np.zeros((0, 0), dtype=np.float32), [])
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return IndexedTiles(ids, matrix / np.maximum(norms, 1e-12), payloads)


def pick_queries(count: int, max_queries: int | None, seed: int) -> np.ndarray:
    """All indices, or a fixed-seed sample of ``max_queries`` of them."""
    if max_queries is None or count <= max_queries:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=max_queries, replace=False))


def rank(tiles: IndexedTiles, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``depth`` candidate indices and similarities per query, after the exclusion rules.

    Excluded (and padded) slots hold index -1 and similarity -inf.
    """
    labels_img, groups = tiles.images, tiles.groups
    out_idx = np.full((len(queries), depth), -1, dtype=np.int64)
    out_sim = np.full((len(queries), depth), -np.inf, dtype=np.float32)
    for start in range(0, len(queries), QUERY_BLOCK):
        block = queries[start : start + QUERY_BLOCK]
        sims = tiles.vectors[block] @ tiles.vectors.T
        same_image = labels_img[block][:, None] == labels_img[None, :]
        same_group = (groups[block][:, None] == groups[None, :]) & (groups[block][:, None] != "")
        sims[same_image | same_group] = -np.inf
        take = min(depth, sims.shape[1])
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        top_sims = np.take_along_axis(sims, top, axis=1)
        top[~np.isfinite(top_sims)] = -1
        out_idx[start : start + len(block), :take] = top
        out_sim[start : start + len(block), :take] = top_sims
    return out_idx, out_sim


def evaluate_encoder(
    tiles: IndexedTiles, ks: list[int], max_queries: int | None = 2000, seed: int = 0, examples: int = 4
) -> EncoderResult:
    """Leave-one-out metrics of one encoder's vectors."""
    if len(tiles.ids) < 2:
        raise InvalidInputError("fewer than 2 labelled tiles for this encoder; ingest the data set first")
    queries = pick_queries(len(tiles.ids), max_queries, seed)
    hit_idx, hit_sim = rank(tiles, queries, max(ks))
    labels = tiles.labels
    results = []
    for row, query in enumerate(queries):
        valid = hit_idx[row] >= 0
        results.append(
            QueryResult(
                str(labels[query]), labels[hit_idx[row][valid]].tolist(), hit_sim[row][valid].tolist()
            )
        )
    summary = summarise(results, ks)
    summary["sampled"] = len(queries) < len(tiles.ids)
    summary["candidates"] = len(tiles.ids)
    chosen = np.random.default_rng(seed + 1).choice(
        len(queries), size=min(examples, len(queries)), replace=False
    )
    shown = [
        {"query": int(queries[row]), "hits": [int(i) for i in hit_idx[row] if i >= 0][:5]} for row in chosen
    ]
    return EncoderResult(summary, shown, tiles)


def _chosen(store: VectorStore, encoders: list[str] | None, ks: list[int]) -> list[str]:
    """The encoders to evaluate (default: every named vector), after checking them and ``ks``."""
    if any(k < 1 for k in ks):
        raise InvalidInputError(f"k values must be positive, got {ks}")
    available = list(store.vectors())
    chosen = encoders or available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise InvalidInputError(
            f"no vectors for {', '.join(unknown)} in the index; it has: {', '.join(available)}"
        )
    return chosen


def evaluate(
    store: VectorStore,
    dataset: str,
    encoders: list[str] | None = None,
    ks: list[int] | None = None,
    max_queries: int | None = 2000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, EncoderResult]:
    """Every requested encoder (default: every named vector in the index) on ``dataset``."""
    ks = sorted(set(ks or [1, 5, 10]))
    require_dataset(store, dataset)
    chosen = _chosen(store, encoders, ks)
    results = {}
    for name in tqdm(chosen, desc=f"evaluating {dataset}", unit="encoder", disable=not progress):
        tiles = load_tiles(store, dataset, name)
        if not tiles.ids:
            raise InvalidInputError(
                f"no labelled {dataset} tiles with {name} vectors; ingest {dataset} first"
            )
        results[name] = evaluate_encoder(tiles, ks, max_queries, seed)
    return results


# ------------------------------------------------------------------------------------------------
# Slide level
# ------------------------------------------------------------------------------------------------


def evaluate_slides(
    store: VectorStore,
    dataset: str,
    encoders: list[str] | None = None,
    ks: list[int] | None = None,
    progress: bool = True,
) -> dict[str, EncoderResult]:
    """Leave-one-slide-out slide search: every labelled whole-slide image of ``dataset`` queries
    with its own mosaic (``histo.slide_search``) against the other slides (its own slide and
    patient excluded, exhaustive search); metrics on the ranked slides' labels (MV@k: majority
    vote of the top k slides)."""
    from histo.slide_search import rank_slides, slide_mosaics

    ks = sorted(set(ks or [1, 3, 5]))
    require_dataset(store, dataset)
    chosen = _chosen(store, encoders, ks)
    results = {}
    for name in tqdm(chosen, desc=f"evaluating {dataset} slides", unit="encoder", disable=not progress):
        mosaics = slide_mosaics(store, name, dataset)
        labelled = {slide: m for slide, m in mosaics.items() if m.label}
        if len(labelled) < 2:
            raise InvalidInputError(
                f"slide search needs at least 2 labelled whole-slide images of {dataset} with {name} "
                f"mosaics; found {len(labelled)} (ingest the slides, then histocli index mosaics if needed)"
            )
        queries = []
        for slide, mosaic in labelled.items():
            flt = SearchFilter(
                dataset=dataset,
                exclude_slide_ids=(slide,),
                exclude_patient_ids=(mosaic.patient_id,) if mosaic.patient_id else (),
            )
            ranked = rank_slides(store, name, mosaic.vectors, flt, max(ks), exact=True)
            queries.append(
                QueryResult(str(mosaic.label), [str(r.label) for r in ranked], [r.score for r in ranked])
            )
        summary = summarise(queries, ks)
        summary["protocol"] = {"level": "slide", "queries": len(queries), "slides": len(mosaics)}
        results[name] = EncoderResult(summary)
    return results
