"""Filters checked against what the index holds, so that a search never answers an empty list
without saying why, and the encoder a query names none of is one that can answer it.

* :class:`Vocabulary` caches the data sets, labels and splits the index holds (refreshed at most
  every ``ttl_s`` seconds, and once more before a value is declared unknown, so data ingested a
  moment ago counts). A filter value the index does not hold is a ``NoMatchError`` that names the
  part, lists what there is and suggests a near miss (wrong case, a typo).
* :func:`explain_empty` says why a search that passed those checks found nothing: the parts
  exist but not together, the encoder has no vectors for the tiles the filter keeps (listing the
  encoders that do), or every such tile was excluded (the query's own image).
* :func:`coverage` counts an encoder's vectors under a filter, for choosing the default encoder
  among those that have some (``SearchEngine``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from histo.errors import NoMatchError, did_you_mean
from histo.store.base import SearchFilter, VectorStore

#: Seconds a vocabulary or coverage answer is reused before the index is asked again.
DEFAULT_TTL_S = 30.0
#: The shortest gap between two refreshes forced by an unknown value (a burst of typos asks once).
MIN_REFRESH_S = 1.0


def _listed(counts: dict[str, int], most: int = 20) -> str:
    shown = ", ".join(f"{value} ({count})" for value, count in list(counts.items())[:most])
    more = f", and {len(counts) - most} more" if len(counts) > most else ""
    return (shown + more) or "none"


class Vocabulary:
    """What the index holds, by data set: its labels and splits, with tile counts."""

    def __init__(self, store: VectorStore, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store, self.ttl_s = store, ttl_s
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], tuple[float, dict[str, int]]] = {}

    def values(self, key: str, dataset: str | None = None, fresh: bool = False) -> dict[str, int]:
        """Tiles per value of payload field ``key`` (in ``dataset``, or in the whole index)."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get((key, dataset))
        too_old = cached is None or now - cached[0] > self.ttl_s
        if cached is not None and not too_old and not (fresh and now - cached[0] > MIN_REFRESH_S):
            return cached[1]
        counts = self.store.count_values(key, SearchFilter(dataset=dataset) if dataset else None)
        with self._lock:
            self._cache[(key, dataset)] = (now, counts)
        return counts

    def _known(self, key: str, wanted: Sequence[str], dataset: str | None) -> dict[str, int]:
        """The values of ``key``, asked again once if any of ``wanted`` is not among them."""
        counts = self.values(key, dataset)
        if any(value not in counts for value in wanted):
            counts = self.values(key, dataset, fresh=True)
        return counts

    def check(self, flt: SearchFilter) -> None:
        """``NoMatchError`` naming the first data set, label or split of ``flt`` that no tile has."""
        if flt.dataset is not None:
            datasets = self._known("dataset", [flt.dataset], None)
            if flt.dataset not in datasets:
                raise NoMatchError(
                    f"no data set {flt.dataset!r} in the index{did_you_mean(flt.dataset, datasets)}; "
                    f"it holds: {_listed(datasets)}"
                )
        scope = f"data set {flt.dataset}" if flt.dataset else "the index"
        if flt.labels:
            labels = self._known("label", flt.labels, flt.dataset)
            for label in flt.labels:
                if label not in labels:
                    raise NoMatchError(
                        f"no tile in {scope} is labelled {label!r}{did_you_mean(label, labels)}; "
                        f"its labels: {_listed(labels)}"
                    )
        if flt.split is not None:
            splits = self._known("split", [flt.split], flt.dataset)
            if flt.split not in splits:
                raise NoMatchError(
                    f"no tile in {scope} is in split {flt.split!r}{did_you_mean(flt.split, splits)}; "
                    + (f"its splits: {_listed(splits)}" if splits else "it has no splits; drop --split")
                )


def require_dataset(store: VectorStore, dataset: str) -> None:
    """``NoMatchError`` when the index holds no data set ``dataset`` (listing those it holds),
    before any work on it starts (evaluation, prune, mosaics)."""
    Vocabulary(store).check(SearchFilter(dataset=dataset))


def kept_only(flt: SearchFilter) -> SearchFilter:
    """The part of ``flt`` that says which tiles a search is about (data set, labels, split),
    without the exclusions of one query (its own image, examples)."""
    return SearchFilter(dataset=flt.dataset, labels=flt.labels, split=flt.split)


def describe(flt: SearchFilter) -> str:
    parts = [f"data set {flt.dataset}"] if flt.dataset else []
    if flt.labels:
        parts.append(f"label {' or '.join(flt.labels)}")
    if flt.split:
        parts.append(f"split {flt.split}")
    return ", ".join(parts) or "no filter"


def coverage(store: VectorStore, flt: SearchFilter, encoders: Sequence[str]) -> dict[str, int]:
    """Encoder -> its vectors among the tiles ``flt`` keeps (the query's exclusions aside)."""
    kept = kept_only(flt)
    return {name: store.count(kept, vector=name) for name in encoders}


def explain_empty(
    store: VectorStore, flt: SearchFilter, encoders: Sequence[str], searchable: Sequence[str]
) -> NoMatchError:
    """Why a search with ``encoders`` under ``flt`` (whose values all exist) found nothing."""
    kept = kept_only(flt)
    tiles = store.count(kept)
    what = describe(kept)
    if not tiles:
        return NoMatchError(
            f"no tile matches {what} together (each part exists on its own); drop a label or the split"
        )
    have = coverage(store, kept, searchable)
    for name in encoders:
        if not have.get(name):
            others = {n: c for n, c in have.items() if c}
            return NoMatchError(
                f"encoder {name} has no vectors for the {tiles} tiles of {what}; encoders that have: "
                f"{_listed(others)}; or ingest those tiles with {name} (histocli ingest DIR ... -e {name})"
            )
    return NoMatchError(
        f"the {tiles} tiles of {what} are all excluded from this search (the query's own image, "
        "its examples or the excluded images); search with include_same_image (--same-image) or "
        "fewer exclusions"
    )


__all__ = [
    "DEFAULT_TTL_S",
    "Vocabulary",
    "coverage",
    "describe",
    "explain_empty",
    "kept_only",
    "require_dataset",
]
