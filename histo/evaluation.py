"""The evaluation protocol (DESIGN.md §5): leave-one-out retrieval over the index, per encoder.

Every labelled tile of the data set is a query (or a fixed-seed sample of ``max_queries`` of them
on large sets, and the report says so). Its candidates are all other tiles of the same data set
**except** those from the query's own image and, where the source records one, its own slide or
patient — otherwise an encoder (or a colour histogram) wins by recognising the slide's stain.
Ranking is exact cosine similarity over the stored vectors, so no approximate-search recall
loss enters the numbers. Metric definitions: ``histo.metrics``; intervals: ``histo.uncertainty``.

**One query set per comparison** (``QueryPlan``): every encoder that has vectors for all the
tiles is scored on the same queries against the same candidates. An encoder that lacks some is
scored on its own tiles and marked ``partial``: the report shows it apart, never in one table
with the others. A class whose tiles all sit in one image, slide or patient can never be found
once those are excluded: its tiles stay candidates but are not queries, and the plan names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from histo.errors import InvalidInputError, NoMatchError
from histo.metrics import QueryResult, per_query, summarise
from histo.query_checks import Vocabulary, require_dataset
from histo.store.base import SearchFilter, VectorStore
from histo.uncertainty import PerQuery

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

    @property
    def units(self) -> np.ndarray:
        """What a query's exclusions remove, and what the bootstrap resamples: its patient, else
        its slide, else its image."""
        return np.array([g or i for g, i in zip(self.groups, self.images, strict=True)])

    def subset(self, keep: Sequence[int]) -> IndexedTiles:
        rows = list(keep)
        return IndexedTiles([self.ids[i] for i in rows], self.vectors[rows], [self.payloads[i] for i in rows])


@dataclass(frozen=True)
class QueryPlan:
    """The queries of one comparison: point ids, labels and resampling units, the classes left
    out because nothing of theirs can be found, and whether the queries are a sample."""

    ids: tuple[str, ...]
    labels: np.ndarray
    units: np.ndarray
    candidates: int
    sampled: bool = False
    #: Class -> its tiles, for classes with fewer than two images/slides/patients.
    left_out: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queries": len(self.ids),
            "units": len(set(self.units.tolist())),
            "candidates": self.candidates,
            "sampled": self.sampled,
            "left_out_classes": self.left_out,
        }


@dataclass
class EncoderResult:
    """Metrics of one encoder plus the raw ranking of a few queries (for the report's grid)."""

    summary: dict[str, Any]
    examples: list[dict[str, Any]] = field(default_factory=list)
    tiles: IndexedTiles | None = None
    #: Each overall metric per query, in the plan's order (for intervals and paired verdicts).
    values: dict[str, PerQuery] = field(default_factory=dict)
    plan: QueryPlan | None = None
    #: Scored on fewer tiles than the other rows (some of its vectors are missing).
    partial: bool = False


@dataclass(frozen=True)
class Narrowing:
    """Evaluate on part of a data set: some labels, or the tiles of one source folder."""

    labels: tuple[str, ...] = ()
    root: Path | None = None

    def keeps(self, payload: dict[str, Any]) -> bool:
        if self.labels and payload.get("label") not in self.labels:
            return False
        return self.root is None or Path(str(payload.get("root", ""))) == self.root.absolute()

    def describe(self) -> str:
        parts = [f"labels {', '.join(self.labels)}"] if self.labels else []
        return "; ".join(parts + ([f"source folder {self.root.absolute()}"] if self.root else []))


def check_narrowing(store: VectorStore, dataset: str, narrowing: Narrowing) -> None:
    """``NoMatchError`` for a label the data set lacks (a near miss named) or a folder none of its
    tiles came from (the folders they did come from listed)."""
    Vocabulary(store).check(SearchFilter(dataset=dataset, labels=narrowing.labels))
    if narrowing.root is None:
        return
    roots = store.count_values("root", SearchFilter(dataset=dataset))
    if str(narrowing.root.absolute()) not in roots:
        raise NoMatchError(
            f"no tile of {dataset} was ingested from {narrowing.root.absolute()}; its tiles come from: "
            + ", ".join(f"{root} ({n})" for root, n in sorted(roots.items()))
        )


def load_tiles(
    store: VectorStore, dataset: str, encoder: str, narrowing: Narrowing | None = None
) -> IndexedTiles:
    """Every labelled tile of ``dataset`` that has the ``encoder`` vector, in point-id order."""
    found = []
    for record in store.scroll(SearchFilter(dataset=dataset), with_vectors=[encoder]):
        payload = record.payload
        if encoder in record.vectors and payload.get("label") and (not narrowing or narrowing.keeps(payload)):
            found.append((record.id, record.vectors[encoder], payload))
    if not found:  # an unknown data set, or one never embedded with this encoder
        return IndexedTiles([], np.zeros((0, 0), dtype=np.float32), [])
    found.sort(key=lambda item: item[0])
    matrix = np.asarray([v for _, v, _ in found], dtype=np.float32).reshape(len(found), -1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return IndexedTiles([i for i, _, _ in found], matrix / np.maximum(norms, 1e-12), [p for _, _, p in found])


def unfindable_classes(labels: np.ndarray, units: np.ndarray) -> dict[str, int]:
    """Classes whose tiles lie in fewer than two images/slides/patients, with their tile counts:
    once the query's own are excluded, no other tile of the class is left to find."""
    out = {}
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        if len(set(units[mask].tolist())) < 2:
            out[str(label)] = int(mask.sum())
    return out


def plan_queries(tiles: IndexedTiles, max_queries: int | None = 2000, seed: int = 0) -> QueryPlan:
    """The queries of a comparison over ``tiles``: findable classes only, sampled with ``seed``."""
    labels, units = tiles.labels, tiles.units
    left_out = unfindable_classes(labels, units)
    eligible = np.flatnonzero(~np.isin(labels, list(left_out)))
    if len(eligible) == 0:
        named = ", ".join(f"{c} ({n} tiles)" for c, n in left_out.items())
        raise InvalidInputError(
            f"every class lies in a single image, slide or patient ({named}), so nothing can be found "
            "once a query's own image is excluded; ingest two or more images per class"
        )
    chosen = eligible[pick_queries(len(eligible), max_queries, seed)]
    return QueryPlan(
        tuple(tiles.ids[i] for i in chosen),
        labels[chosen],
        units[chosen],
        len(tiles.ids),
        sampled=len(chosen) < len(eligible),
        left_out=left_out,
    )


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
    tiles: IndexedTiles,
    ks: list[int],
    max_queries: int | None = 2000,
    seed: int = 0,
    examples: int = 4,
    plan: QueryPlan | None = None,
) -> EncoderResult:
    """Leave-one-out metrics of one encoder's vectors, on ``plan``'s queries (default: planned
    from ``tiles`` with ``max_queries`` and ``seed``)."""
    if len(tiles.ids) < 2:
        raise InvalidInputError("fewer than 2 labelled tiles for this encoder; ingest the data set first")
    plan = plan or plan_queries(tiles, max_queries, seed)
    row_of = {pid: i for i, pid in enumerate(tiles.ids)}
    queries = np.array([row_of[pid] for pid in plan.ids], dtype=np.int64)
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
    summary["sampled"] = plan.sampled
    summary["candidates"] = len(tiles.ids)
    summary["left_out_classes"] = plan.left_out
    chosen = np.random.default_rng(seed + 1).choice(
        len(queries), size=min(examples, len(queries)), replace=False
    )
    shown = [
        {"query": int(queries[row]), "hits": [int(i) for i in hit_idx[row] if i >= 0][:5]} for row in chosen
    ]
    return EncoderResult(summary, shown, tiles, per_query(results, ks), plan)


def _chosen(store: VectorStore, encoders: list[str] | None, ks: list[int]) -> list[str]:
    """The encoders to evaluate (default: every named vector, by name), after checking them and ``ks``."""
    if any(k < 1 for k in ks):
        raise InvalidInputError(f"k values must be positive, got {ks}")
    available = list(store.vectors())
    chosen = list(dict.fromkeys(encoders)) if encoders else sorted(available)
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
    narrowing: Narrowing | None = None,
) -> dict[str, EncoderResult]:
    """Every requested encoder (default: every named vector in the index) on ``dataset``, all on
    one query plan; an encoder without vectors for some of the tiles is scored apart (partial)."""
    ks = sorted(set(ks or [1, 5, 10]))
    require_dataset(store, dataset)
    if narrowing is not None:
        check_narrowing(store, dataset, narrowing)
    chosen = _chosen(store, encoders, ks)
    loaded = {name: load_tiles(store, dataset, name, narrowing) for name in chosen}
    where = f"{dataset} ({narrowing.describe()})" if narrowing and narrowing.describe() else dataset
    for name, tiles in loaded.items():
        if not tiles.ids:
            raise InvalidInputError(f"no labelled {where} tiles with {name} vectors; ingest {dataset} first")
    compared = common_tiles(loaded)
    plan = plan_queries(next(iter(compared.values())), max_queries, seed)
    results = {}
    for name in tqdm(chosen, desc=f"evaluating {dataset}", unit="encoder", disable=not progress):
        if name in compared:
            results[name] = evaluate_encoder(compared[name], ks, max_queries, seed, plan=plan)
        else:
            results[name] = evaluate_encoder(loaded[name], ks, max_queries, seed)
            results[name].partial = True
    return results


def common_tiles(loaded: dict[str, IndexedTiles]) -> dict[str, IndexedTiles]:
    """The rows one comparison can hold: the encoder with the most tiles sets the tile set, and
    every encoder that has vectors for all of them joins, cut to exactly those tiles (same
    queries, same candidates). The others are left out (scored apart, as partial rows)."""
    reference = max(loaded, key=lambda name: len(loaded[name].ids))
    wanted = loaded[reference].ids
    compared = {}
    for name, tiles in loaded.items():
        row_of = {pid: i for i, pid in enumerate(tiles.ids)}
        if all(pid in row_of for pid in wanted):
            compared[name] = tiles.subset([row_of[pid] for pid in wanted])
    return compared


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
        plan = QueryPlan(
            tuple(labelled),
            np.array([q.label for q in queries]),
            np.array([m.patient_id or slide for slide, m in labelled.items()]),
            len(labelled),
        )
        results[name] = EncoderResult(summary, values=per_query(queries, ks), plan=plan)
    most = max(len(r.plan.ids) for r in results.values() if r.plan)
    for result in results.values():
        result.partial = result.plan is not None and len(result.plan.ids) < most
    return results
