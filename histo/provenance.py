"""Which encoder artifact made the index's vectors, and the checks that keep queries honest.

Every point records, per named vector, the digest of the artifact that made it (the payload
object ``artifacts``: ``histo.store.base.STAMP_KEY``; the digest: ``artifact_digest``). A query is
embedded by the artifact loaded now; compared with vectors of another artifact of the same name
(an encoder retrained, re-imported or edited after ingestion) its scores mean nothing, and no
error would say so. So:

* ingestion re-embeds a tile whose vector another artifact made (``histo.ingest.Ingestor``), or,
  asked not to, refuses before it starts (:func:`refuse_stale`);
* the search engine does not search with an encoder while the index holds vectors another
  artifact made (``StaleVectorsError``), unless told to warn instead (:data:`STALE_POLICIES`);
* ``histocli train`` will not replace an artifact whose vectors are indexed without ``--force``
  (:func:`indexed_vectors`).

Vectors without a record (written before histo recorded artifacts, or through the store API
directly) are of unknown origin: ingestion re-embeds them, searches use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from histo.errors import StaleVectorsError
from histo.store.base import SearchFilter, VectorStore, stamp_field

#: What the search engine does with an encoder whose vectors another artifact made: refuse to
#: search with it (``StaleVectorsError``), or search and log a warning (``--allow-stale``).
STALE_POLICIES = ("refuse", "warn")


@dataclass(frozen=True)
class Provenance:
    """Which artifacts made an encoder's vectors in the index, against the one loaded now."""

    encoder: str
    digest: str
    #: digest -> vectors that artifact made (vectors without a record are not counted)
    made_by: dict[str, int]

    @property
    def stale(self) -> int:
        """Vectors another artifact made."""
        return sum(count for digest, count in self.made_by.items() if digest != self.digest)

    @property
    def current(self) -> int:
        return self.made_by.get(self.digest, 0)


def provenance(
    store: VectorStore, encoder: str, digest: str, filter: SearchFilter | None = None
) -> Provenance:
    """Which artifacts made ``encoder``'s vectors (those ``filter`` lets through)."""
    return Provenance(encoder, digest, store.count_values(stamp_field(encoder), filter))


def stale_datasets(store: VectorStore, found: Provenance) -> dict[str, int]:
    """Data set -> vectors of ``found.encoder`` there that another artifact made."""
    per_dataset: dict[str, int] = {}
    for digest in found.made_by:
        if digest == found.digest:
            continue
        for dataset, count in store.count_values(
            "dataset", where={stamp_field(found.encoder): digest}
        ).items():
            per_dataset[dataset] = per_dataset.get(dataset, 0) + count
    return dict(sorted(per_dataset.items()))


def ingest_command(store: VectorStore, dataset: str, encoders: str) -> str:
    """The ``histocli ingest`` that re-embeds ``dataset`` with ``encoders`` (a comma list), from
    the folder and layout its points record."""
    first = next(iter(store.scroll(SearchFilter(dataset=dataset), page=1)), None)
    payload = first.payload if first is not None else {}
    root = payload.get("root") or "DIR"
    layout = payload.get("layout") or _layout_of_legacy(dataset)
    return f"histocli ingest {root} --layout {layout} --name {dataset} -e {encoders}"


def _layout_of_legacy(dataset: str) -> str:
    """Points ingested before histo recorded layouts: their data set name was the layout's."""
    from histo.data.datasets import dataset_names

    return dataset if dataset in dataset_names() else "folder"


def stale_message(store: VectorStore, found: Provenance) -> str:
    """One line: how many of the encoder's vectors another artifact made, where, and the fix."""
    datasets = stale_datasets(store, found)
    shown = ", ".join(f"{name} ({count})" for name, count in datasets.items()) or "-"
    fixes = "; ".join(ingest_command(store, name, found.encoder) for name in datasets)
    return (
        f"{found.stale} {found.encoder} vectors in the index (data sets {shown}) were made by an earlier "
        f"{found.encoder} artifact, not the one loaded now (digest {found.digest}): a query's scores "
        f"against them would mean nothing. Re-embed them: "
        f"{fixes or 'histocli ingest DIR ... -e ' + found.encoder}"
    )


def stale_reasons(store: VectorStore, digests: Mapping[str, str]) -> dict[str, str]:
    """Encoder -> the :func:`stale_message` of each encoder with vectors another artifact made."""
    reasons = {}
    for name, digest in digests.items():
        found = provenance(store, name, digest)
        if found.stale:
            reasons[name] = stale_message(store, found)
    return reasons


def refuse_stale(store: VectorStore, digests: Mapping[str, str], dataset: str) -> None:
    """``StaleVectorsError`` when ``dataset``'s vectors of any of these encoders were made by
    another artifact (``histocli ingest --no-reembed``)."""
    for name, digest in digests.items():
        if name not in store.vectors():
            continue
        found = provenance(store, name, digest, SearchFilter(dataset=dataset))
        if found.stale:
            raise StaleVectorsError(
                f"{found.stale} {name} vectors of {dataset} were made by another artifact than the "
                f"{name} loaded now (digest {digest}); drop --no-reembed to re-embed them, or train "
                f"under a new name (histocli train METHOD --name {name}_2 ...)"
            )


def indexed_vectors(store: VectorStore, encoder: str) -> int:
    """How many vectors of ``encoder`` the index holds (0 when it has no such vector)."""
    if encoder not in store.vectors():
        return 0
    return store.count(vector=encoder)


__all__ = [
    "STALE_POLICIES",
    "Provenance",
    "indexed_vectors",
    "ingest_command",
    "provenance",
    "refuse_stale",
    "stale_datasets",
    "stale_message",
    "stale_reasons",
]
