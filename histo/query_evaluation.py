"""Evaluation of queries beyond one vector, through the store's own query API (exact search).

* **Fusion** (``evaluate_fusion``): the leave-one-out protocol of ``histo.evaluation`` (own image
  and own patient or slide excluded), each query tile searching with its stored vectors of
  several encoders fused by RRF or DBSF in the store, so the row sits beside the single encoders'.
* **Feedback** (``simulate_feedback``): one simulated round of relevance feedback. A query's top
  10 are judged by label (same label = liked, else unliked) and the store's recommendation query
  runs with the query and the liked tiles as positives and the unliked as negatives. The 10
  tiles it returns are new (examples are excluded), so the fair comparison is not the first
  page but the **next** 10 of the plain ranking (ranks 11-20): what the user would have seen
  without feedback. P@10 of all three is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from histo.errors import InvalidInputError
from histo.evaluation import (
    EncoderResult,
    IndexedTiles,
    QueryPlan,
    common_tiles,
    load_tiles,
    pick_queries,
    plan_queries,
)
from histo.metrics import QueryResult, per_query, summarise
from histo.store.base import DEFAULT_STRATEGY, FUSION_DEPTH, STRATEGIES, Leg, SearchFilter, VectorStore

FEEDBACK_K = 10


def leave_one_out_filter(dataset: str, payload: dict[str, Any]) -> SearchFilter:
    """The candidates of a query tile: its data set, less its own image and patient (or slide)."""
    image, patient, slide = payload.get("image_id"), payload.get("patient_id"), payload.get("slide_id")
    return SearchFilter(
        dataset=dataset,
        exclude_image_ids=(image,) if image else (),
        exclude_patient_ids=(patient,) if patient else (),
        exclude_slide_ids=(slide,) if slide and not patient else (),
    )


def _common_tiles(store: VectorStore, dataset: str, encoders: Sequence[str]) -> dict[str, IndexedTiles]:
    """Each encoder's tiles, restricted to the ids every one of them has, in one order."""
    per = {name: load_tiles(store, dataset, name) for name in encoders}
    compared = common_tiles(per)
    if len(compared) < len(per):
        missing = ", ".join(name for name in per if name not in compared)
        raise InvalidInputError(
            f"{missing} lack vectors for some labelled {dataset} tiles, so the fused query cannot "
            f"run on every tile; ingest {dataset} with --encoders {','.join(encoders)}"
        )
    return compared


def fused_name(encoders: Sequence[str], fusion: str) -> str:
    return f"{fusion}({'+'.join(encoders)})"


def evaluate_fusion(
    store: VectorStore,
    dataset: str,
    encoders: Sequence[str],
    fusion: str = "rrf",
    ks: Sequence[int] = (1, 5, 10),
    max_queries: int | None = 2000,
    seed: int = 0,
    progress: bool = True,
    plan: QueryPlan | None = None,
) -> EncoderResult:
    """Leave-one-out metrics of ``encoders`` fused in the store, on ``plan``'s queries (those of
    the single encoders' rows; default: planned as theirs are)."""
    if len(encoders) < 2:
        raise InvalidInputError("fusion needs at least two encoders, e.g. --encoders simclr,nnclr")
    tiles = _common_tiles(store, dataset, encoders)
    first = tiles[encoders[0]]
    plan = plan or plan_queries(first, max_queries, seed)
    row_of = {pid: i for i, pid in enumerate(first.ids)}
    queries = [row_of[pid] for pid in plan.ids]
    depth = max(max(ks), FUSION_DEPTH)
    results = []
    desc = f"evaluating {fused_name(encoders, fusion)} on {dataset}"
    for q in tqdm(queries, desc=desc, unit="query", disable=not progress):
        payload = first.payloads[q]
        legs = [Leg(name, tiles[name].vectors[q]) for name in encoders]
        flt = leave_one_out_filter(dataset, payload)
        hits = store.query(legs, max(ks), flt, fusion=fusion, depth=depth, exact=True)
        results.append(
            QueryResult(
                str(payload.get("label")),
                [str(h.payload.get("label", "")) for h in hits],
                [h.score for h in hits],
            )
        )
    summary = summarise(results, ks)
    summary["sampled"] = plan.sampled
    summary["candidates"] = len(first.ids)
    summary["left_out_classes"] = plan.left_out
    summary["fusion"] = {"method": fusion, "encoders": list(encoders), "depth": depth}
    return EncoderResult(summary, values=per_query(results, ks), plan=plan)


@dataclass(frozen=True)
class FeedbackFigures:
    """P@10 of one encoder's first page, its next page, and the page after one feedback round."""

    encoder: str
    strategy: str
    queries: int
    first: float
    next_page: float
    after: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "strategy": self.strategy,
            "queries": self.queries,
            "P@10 first page": round(self.first, 4),
            "P@10 next page (ranks 11-20)": round(self.next_page, 4),
            "P@10 after feedback": round(self.after, 4),
        }


def simulate_feedback(
    store: VectorStore,
    dataset: str,
    encoder: str,
    strategies: Sequence[str] = (DEFAULT_STRATEGY,),
    max_queries: int | None = 500,
    seed: int = 0,
    progress: bool = True,
) -> list[FeedbackFigures]:
    """One simulated feedback round per query tile, for each recommendation strategy."""
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise InvalidInputError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    tiles = load_tiles(store, dataset, encoder)
    if len(tiles.ids) < 2 * FEEDBACK_K + 1:
        raise InvalidInputError(f"the feedback round needs at least {2 * FEEDBACK_K + 1} labelled tiles")
    queries = pick_queries(len(tiles.ids), max_queries, seed)
    row = {pid: i for i, pid in enumerate(tiles.ids)}
    first, next_page = [], []
    after: dict[str, list[float]] = {s: [] for s in strategies}
    desc = f"feedback round, {encoder} on {dataset}"
    for q in tqdm(queries, desc=desc, unit="query", disable=not progress):
        label = tiles.payloads[q].get("label")
        flt = leave_one_out_filter(dataset, tiles.payloads[q])
        plain = store.search(encoder, tiles.vectors[q], 2 * FEEDBACK_K, flt, exact=True)
        page = plain[:FEEDBACK_K]
        first.append(_precision(page, label))
        next_page.append(_precision(plain[FEEDBACK_K:], label))
        vectors = _page_vectors(store, encoder, page, tiles, row)
        liked = tuple(v for h, v in zip(page, vectors, strict=True) if h.payload.get("label") == label)
        unliked = tuple(v for h, v in zip(page, vectors, strict=True) if h.payload.get("label") != label)
        excluded = dataclasses.replace(flt, exclude_point_ids=tuple(h.id for h in page))
        for strategy in strategies:
            leg = Leg(encoder, positives=(tiles.vectors[q], *liked), negatives=unliked, strategy=strategy)
            after[strategy].append(_precision(store.query([leg], FEEDBACK_K, excluded, exact=True), label))
    return [
        FeedbackFigures(
            encoder,
            s,
            len(queries),
            float(np.mean(first)),
            float(np.mean(next_page)),
            float(np.mean(after[s])),
        )
        for s in strategies
    ]


def _page_vectors(
    store: VectorStore, encoder: str, page: Sequence[Any], tiles: IndexedTiles, row: dict[str, int]
) -> list[Any]:
    """The page's vectors: from the tiles already loaded, read from the store only for hits that
    are not among them (unlabelled tiles)."""
    missing = [h.id for h in page if h.id not in row]
    read = (
        {r.id: r.vectors[encoder] for r in store.retrieve(missing, with_vectors=[encoder])} if missing else {}
    )
    return [tiles.vectors[row[h.id]] if h.id in row else read[h.id] for h in page]


def _precision(hits: Sequence[Any], label: object) -> float:
    return sum(h.payload.get("label") == label for h in hits) / FEEDBACK_K


__all__ = ["FeedbackFigures", "evaluate_fusion", "fused_name", "leave_one_out_filter", "simulate_feedback"]
