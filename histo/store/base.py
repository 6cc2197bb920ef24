"""The store contract: data classes, the filter model and the shared logic of both backends.

A store holds one collection with one cosine **named vector per encoder** (any point may carry any
subset of them) and a payload (DESIGN.md §4). Both backends, ``EdgeStore`` (embedded
``qdrant-edge-py`` shard) and ``ServerStore`` (``qdrant-client``), subclass ``StoreBase``: it
validates every input, owns the semantics (upsert merges vectors, filters, stats) and calls a few
backend primitives that speak the engine's own types. Congruence tests run the same operations on
both and compare the results.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar, get_args, runtime_checkable

import numpy as np

from histo.errors import InvalidInputError, UnknownNameError, unknown_name

DEFAULT_COLLECTION = "histo"
#: Payload fields that get a keyword index and can be filtered on.
FILTER_FIELDS: tuple[str, ...] = (
    "dataset",
    "label",
    "split",
    "image_id",
    "slide_id",
    "patient_id",
    "role",
    "layout",
)
#: The condition key that stands for the point id (a has-id condition), not a payload field.
POINT_ID = "#id"
#: The payload ``role`` of a slide's representative tiles (its mosaic), which slide search searches.
MOSAIC_ROLE = "mosaic"
#: The payload object that records, per named vector of a point, the digest of the encoder artifact
#: that made it (``{"simclr": "3f2a9c0b1d4e5f67"}``; ``histo.provenance``). Each entry is a keyword
#: index (``stamp_field``), so the index can say, per encoder, which artifacts its vectors came from.
STAMP_KEY = "artifacts"


def stamp_field(name: str) -> str:
    """The payload field holding the artifact digest of a point's ``name`` vector."""
    return f"{STAMP_KEY}.{name}"


VectorLike = Sequence[float] | np.ndarray
#: A backend-neutral list of ``(payload field, accepted values)`` conditions.
Conditions = tuple[tuple[str, tuple[str, ...]], ...]

T = TypeVar("T")

_ID_CHUNK = 1024  # ids per has-id condition / retrieve call
_WRITE_CHUNK = 512  # points per write call

#: How several encoders' candidate lists are fused: reciprocal rank or distribution-based score fusion.
FUSIONS: tuple[str, ...] = ("rrf", "dbsf")
#: RRF's k (Cormack et al. 2009), given explicitly so that both backends rank alike.
RRF_K = 60
#: Candidates each encoder contributes to a fused query, at least (``Leg`` lists are this deep).
FUSION_DEPTH = 100
#: Recommendation strategies: Qdrant's ``best_score`` and ``sum_scores`` run in the engine;
#: ``average_vector`` is Qdrant's rule (2 * mean(positives) - mean(negatives)) turned into a
#: nearest query here, as Qdrant's collection layer does (the embedded shard has no such query).
STRATEGIES: tuple[str, ...] = ("best_score", "sum_scores", "average_vector")
#: The strategy when none is named (why: ``histo.search.Feedback``).
DEFAULT_STRATEGY = "average_vector"

#: How a new collection compresses its vectors (``IndexOptions.quantization``): not at all, int8
#: scalar quantization, 4-bit TurboQuant, or 1 bit per dimension.
Quantization = Literal["none", "int8", "turbo4", "binary"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
#: The default, chosen by ``python -m benchmarks run --only quantization`` (README, "Quantization"):
#: recall@10 against exact stays >= 0.99 with rescoring, searches get faster and resident memory
#: falls to about a quarter, since the float vectors stay on disk for the rescoring only.
DEFAULT_QUANTIZATION: Quantization = "int8"


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """How the vectors of a new collection are laid out and searched.

    ``quantization`` (one of ``QUANTIZATIONS``) applies when the collection is created: the
    compressed copies stay in RAM and the float vectors go to disk (memory-mapped), read back
    only to rescore the ``oversampling`` x limit best candidates, so results keep full precision.
    An existing collection keeps the layout it was created with; ``oversampling`` applies to
    every search. ``payload_m`` adds graph links per value of the filter fields (Qdrant's
    filter-aware HNSW), for filtered searches without ACORN's extra cost; None: none.
    """

    quantization: Quantization = DEFAULT_QUANTIZATION
    oversampling: float = 2.0
    payload_m: int | None = None

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise unknown_name("quantization", self.quantization, list(QUANTIZATIONS))
        if not 1.0 <= self.oversampling <= 64.0:
            raise InvalidInputError(f"oversampling must be between 1 and 64, not {self.oversampling}")
        if self.payload_m is not None and not 1 <= self.payload_m <= 512:
            raise InvalidInputError(f"payload_m must be between 1 and 512, not {self.payload_m}")

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"


#: The engines' quantization config keys (edge_config.json, the server's collection info) by name.
_QUANTIZATION_KEYS = {"scalar": "int8", "turbo": "turbo4", "binary": "binary"}


def quantization_name(config: Mapping[str, Any] | None) -> str:
    """``QUANTIZATIONS`` name of an engine's quantization config as JSON (``{"scalar": {...}}``)."""
    for key, name in _QUANTIZATION_KEYS.items():
        if config and config.get(key) is not None:
            return name
    return "none"


# ------------------------------------------------------------------------------------------------
# Data classes
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """A point to write: uuid id, any subset of the named vectors, and a payload.

    ``payload=None`` keeps the payload a point already has (a new point gets an empty one); a dict
    replaces it whole. Vectors named here replace those names; names not given are kept.
    """

    id: str | uuid.UUID
    vectors: Mapping[str, VectorLike] = field(default_factory=dict)
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result, best first; ``sources`` names the encoders (vectors) whose candidate
    list held it (for a query of one vector, that vector)."""

    id: str
    score: float
    payload: dict[str, Any]
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Leg:
    """One named vector's part of a query, in the engine's terms: the points nearest ``vector``
    (diversified by maximal marginal relevance when ``diversity`` is set: 0 = plain ranking,
    1 = most diverse; MMR's lambda is 1 - diversity), or, when ``positives`` are given, a
    recommendation from positive and negative example vectors by ``strategy``."""

    using: str
    vector: VectorLike | None = None
    positives: tuple[VectorLike, ...] = ()
    negatives: tuple[VectorLike, ...] = ()
    strategy: str = DEFAULT_STRATEGY
    diversity: float | None = None

    @property
    def is_recommend(self) -> bool:
        return bool(self.positives)


@dataclass(frozen=True, slots=True)
class Plan:
    """One engine request: a single leg, or several fused (each leg's ``depth`` best, then RRF or
    DBSF over those lists); ``limit`` results, with payloads or ids only."""

    legs: tuple[Leg, ...]
    limit: int
    fusion: str = "rrf"
    depth: int = FUSION_DEPTH
    payload: bool = True


def request_fields(plan: Plan, flt: Any) -> dict[str, Any]:
    """The fields a query request has under the same names in both engines' APIs."""
    return {"limit": plan.limit, "filter": flt, "with_payload": plan.payload, "with_vector": False}


def mmr_candidates(limit: int) -> int:
    """Candidates MMR re-ranks: enough that diversifying can reach past near-duplicates."""
    return min(10_000, max(100, 4 * limit))


@dataclass(frozen=True, slots=True)
class Record:
    """One stored point as ``retrieve`` returns it (vectors only where asked for and present)."""

    id: str
    payload: dict[str, Any]
    vectors: dict[str, list[float]] = field(default_factory=dict)


def _as_str_tuple(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidInputError(
            f"filter {name} must be a list of strings, got {value!r}; e.g. {name}=('a', 'b')"
        )
    items = tuple(value)
    for item in items:
        _check_value(name, item)
    return tuple(dict.fromkeys(items))  # drop repeats, keep order


def _check_value(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"filter {name} needs non-empty strings, got {value!r}")


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What a search or count may return: keep a dataset / labels / split, drop whole images,
    slides or patients (the leave-one-out exclusions of DESIGN.md §5).

    Lists are turned into tuples; empty strings and non-strings raise ``InvalidInputError`` here,
    when the filter is built.
    """

    dataset: str | None = None
    labels: tuple[str, ...] = ()
    split: str | None = None
    exclude_image_ids: tuple[str, ...] = ()
    exclude_slide_ids: tuple[str, ...] = ()
    exclude_patient_ids: tuple[str, ...] = ()
    #: Keep only slides' mosaic tiles (payload ``role`` = ``mosaic``; see ``histo.slide_search``).
    mosaic_only: bool = False
    #: Keep only tiles of these slides.
    slide_ids: tuple[str, ...] = ()
    #: Drop these points (the query's own point, the examples of a recommendation).
    exclude_point_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("dataset", "split"):
            value = getattr(self, name)
            if value is not None:
                _check_value(name, value)
        for name in ("labels", "exclude_image_ids", "exclude_slide_ids", "exclude_patient_ids", "slide_ids"):
            object.__setattr__(self, name, _as_str_tuple(name, getattr(self, name)))
        points = tuple(
            dict.fromkeys(canonical_id(i) for i in _as_str_tuple("exclude_point_ids", self.exclude_point_ids))
        )
        object.__setattr__(self, "exclude_point_ids", points)

    @property
    def must(self) -> Conditions:
        """Conditions a point has to meet (each one: field equals any of the values)."""
        conds: list[tuple[str, tuple[str, ...]]] = []
        if self.dataset is not None:
            conds.append(("dataset", (self.dataset,)))
        if self.labels:
            conds.append(("label", self.labels))
        if self.split is not None:
            conds.append(("split", (self.split,)))
        if self.slide_ids:
            conds.append(("slide_id", self.slide_ids))
        if self.mosaic_only:
            conds.append(("role", (MOSAIC_ROLE,)))
        return tuple(conds)

    @property
    def must_not(self) -> Conditions:
        """Conditions a point must not meet."""
        pairs = (
            ("image_id", self.exclude_image_ids),
            ("slide_id", self.exclude_slide_ids),
            ("patient_id", self.exclude_patient_ids),
            (POINT_ID, self.exclude_point_ids),
        )
        return tuple((key, values) for key, values in pairs if values)

    @property
    def is_empty(self) -> bool:
        return not self.must and not self.must_not


# ------------------------------------------------------------------------------------------------
# The protocol the rest of histo codes against
# ------------------------------------------------------------------------------------------------


@runtime_checkable
class VectorStore(Protocol):
    """One collection of tiles with a named cosine vector per encoder."""

    collection: str

    @property
    def description(self) -> str:
        """Where the store lives, for messages and logs (a folder or a URL)."""
        ...

    def vectors(self) -> dict[str, int]:
        """The named vectors the collection has, name -> dimension."""
        ...

    def ensure_vectors(self, dims: Mapping[str, int]) -> list[str]:
        """Create the collection or add the missing named vectors; returns the names added."""
        ...

    def upsert(self, points: Iterable[Point]) -> int:
        """Write points (merging vectors into existing ones); returns how many were written."""
        ...

    def search(
        self,
        vector_name: str,
        query_vector: VectorLike,
        limit: int = 10,
        filter: SearchFilter | None = None,
        *,
        exact: bool = False,
    ) -> list[Hit]:
        """The ``limit`` nearest points by cosine similarity, best first."""
        ...

    def query(
        self,
        legs: Sequence[Leg],
        limit: int = 10,
        filter: SearchFilter | None = None,
        *,
        fusion: str = "rrf",
        depth: int | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """Nearest, MMR or recommendation queries of one or several named vectors, fused in the
        engine (prefetch + RRF/DBSF); each hit names the vectors that found it."""
        ...

    def retrieve(
        self, ids: Iterable[str | uuid.UUID], with_vectors: bool | Sequence[str] = False
    ) -> list[Record]:
        """Points by id, in the order asked; unknown ids are left out."""
        ...

    def missing_vectors(self, ids: Iterable[str | uuid.UUID], names: Iterable[str]) -> dict[str, set[str]]:
        """For each id that lacks some of ``names`` (or does not exist), the names it lacks."""
        ...

    def count(self, filter: SearchFilter | None = None, *, vector: str | None = None) -> int:
        """Points ``filter`` lets through (that have the named ``vector``, when given)."""
        ...

    def count_values(
        self, key: str, filter: SearchFilter | None = None, where: Mapping[str, str] | None = None
    ) -> dict[str, int]:
        """Points per value of payload field ``key`` among those ``filter`` and ``where`` keep."""
        ...

    def delete(self, ids: Iterable[str | uuid.UUID]) -> int:
        """Remove points by id; returns how many existed (unknown ids are ignored)."""
        ...

    def scroll(
        self, filter: SearchFilter | None = None, with_vectors: bool | Sequence[str] = False, page: int = 256
    ) -> Iterator[Record]:
        """Every point matching ``filter``, page by page (for evaluation and exports)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Points, points per named vector, per dataset and per (dataset, label)."""
        ...

    def inventory(self) -> dict[str, Any]:
        """What a copy must reproduce (snapshots, migration): points, vectors (name -> dim), points
        per named vector, per data set and per (data set, named vector), and each data set's roots."""
        ...

    def scroll_page(
        self, offset: str | None, limit: int, with_vectors: bool = True
    ) -> tuple[list[Record], str | None]:
        """Up to ``limit`` points in id order from ``offset`` (None: the first), with payloads, and
        the id the next page starts at (None after the last): a copy resumes where it stopped."""
        ...

    def snapshot(self, out: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Write a consistent snapshot of the collection to the file ``out`` (``histo.store.archive``)
        with ``manifest`` and the inventory in its manifest; returns the manifest it wrote."""
        ...

    def restore(self, snapshot: Path, manifest: Mapping[str, Any]) -> None:
        """Replace the collection with the verified snapshot whose manifest is ``manifest``
        (``histo.snapshots.restore_snapshot`` verifies it); the old one stays if this fails."""
        ...

    def optimize(self) -> None:
        """Build indexes after a bulk load (HNSW, segment merges); a no-op where the server does it."""
        ...

    def announce(self, **serves: str) -> None:
        """Say where this process serves the store (``grpc="HOST:PORT"``, ``web="URL"``), so that
        another process finding the embedded index in use can name the way through it."""
        ...

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# ------------------------------------------------------------------------------------------------
# Validation helpers
# ------------------------------------------------------------------------------------------------


def canonical_id(value: object) -> str:
    """A point id as Qdrant prints it: a lowercase hyphenated UUID string."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidInputError(
        f"point id {value!r} is not a UUID (ids look like 1b4e28ba-2fa1-4d2e-883f-0016d3cca427); "
        "copy one from the id column of a search result"
    )


def as_vector(name: str, value: object, dim: int) -> list[float]:
    """A finite, non-zero 1-d vector of ``dim`` floats (cosine needs a direction)."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"vector {name!r} is not a list of numbers: {exc}") from None
    if array.ndim != 1 or array.shape[0] != dim:
        raise InvalidInputError(
            f"vector {name!r} has shape {array.shape}, expected ({dim},); was it made by another encoder?"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError(f"vector {name!r} contains NaN or infinity; check the encoder output")
    if not np.any(array):
        raise InvalidInputError(f"vector {name!r} is all zeros; cosine similarity needs a non-zero vector")
    return [float(x) for x in array.tolist()]


_COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_collection(name: object) -> str:
    """A collection name that is also a safe folder name (the embedded store keeps one folder each)."""
    if not isinstance(name, str) or not _COLLECTION_RE.match(name):
        raise InvalidInputError(
            f"collection name {name!r} is not allowed; use letters, digits, '_', '-', '.' (at most 64)"
        )
    return name


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"vector names are non-empty strings (encoder names), got {name!r}")
    return name


def check_dim(name: str, dim: object) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or int(dim) < 1:
        raise InvalidInputError(f"vector {name!r} needs a positive integer dimension, got {dim!r}")
    return int(dim)


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or int(limit) < 1:
        raise InvalidInputError(f"search limit must be a positive integer, got {limit!r}")
    return int(limit)


def _in_order(hits: list[Hit], sources: tuple[str, ...]) -> list[Hit]:
    """Hits best first, ties by id; ``sources`` set where given."""
    if sources:
        hits = [dataclasses.replace(hit, sources=sources) for hit in hits]
    return sorted(hits, key=lambda hit: (-hit.score, hit.id))


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------------------------
# Shared logic over backend primitives
# ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Write:
    """One point of an upsert after validation and de-duplication."""

    id: str
    vectors: dict[str, list[float]]
    payload: dict[str, Any] | None


class StoreBase(abc.ABC):
    """Validation and semantics common to both backends; subclasses implement the primitives."""

    collection: str

    # -- primitives ------------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def description(self) -> str: ...

    @abc.abstractmethod
    def _read_vectors(self) -> dict[str, tuple[int, str]]:
        """name -> (dim, distance name) as the engine has it; {} when there is no collection."""

    @abc.abstractmethod
    def _create(self, dims: Mapping[str, int]) -> None:
        """Create the collection with these cosine vectors."""

    @abc.abstractmethod
    def _add_vector(self, name: str, dim: int) -> None:
        """Add a cosine named vector to the existing collection, keeping every point."""

    @abc.abstractmethod
    def _read_quantization(self) -> str:
        """The collection's quantization as it was created (a ``QUANTIZATIONS`` name)."""

    @abc.abstractmethod
    def _ensure_indexes(self, fields: Sequence[str]) -> None:
        """Keyword payload indexes on ``fields`` (idempotent)."""

    @abc.abstractmethod
    def _existing(self, ids: Sequence[str]) -> set[str]: ...

    @abc.abstractmethod
    def _insert(self, writes: Sequence[_Write]) -> None:
        """Write new points whole."""

    @abc.abstractmethod
    def _merge(self, writes: Sequence[_Write]) -> None:
        """Update existing points: set the given vectors, replace payloads that are not None."""

    @abc.abstractmethod
    def _delete(self, ids: Sequence[str]) -> None:
        """Remove these existing points."""

    @abc.abstractmethod
    def _query_many(
        self, plans: Sequence[Plan], must: Conditions, must_not: Conditions, exact: bool
    ) -> list[list[Hit]]:
        """Run each plan (legs already checked: vectors are float lists, strategies the engine's)
        with the same filter; one list of hits per plan, as the engine ranked them."""

    @abc.abstractmethod
    def _retrieve(self, ids: Sequence[str], with_vectors: bool | list[str]) -> list[Record]: ...

    @abc.abstractmethod
    def _scroll_page(
        self, must: Conditions, must_not: Conditions, with_vectors: bool | list[str], offset: Any, limit: int
    ) -> tuple[list[Record], Any]:
        """One page of matching points and the offset of the next page (None at the end)."""

    @abc.abstractmethod
    def _lacking(self, ids: Sequence[str], name: str) -> set[str]:
        """Those of ``ids`` that exist and have no ``name`` vector."""

    @abc.abstractmethod
    def _count(self, must: Conditions, must_not: Conditions, has_vector: str | None = None) -> int: ...

    @abc.abstractmethod
    def _facet(self, key: str, must: Conditions, must_not: Conditions = ()) -> dict[str, int]:
        """Exact counts of the values of ``key`` among points meeting ``must`` and not ``must_not``
        (``key`` has a keyword index)."""

    @abc.abstractmethod
    def _drop(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def optimize(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Build indexes after a bulk load; the default does nothing."""

    def announce(self, **serves: str) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Tell other processes what this one serves from the store (the embedded store records it
        in its owner lock); the default does nothing: a server is shared, not owned."""

    # -- state -----------------------------------------------------------------------------------

    _dims: dict[str, int] | None = None
    _closed: bool = False
    #: Payload fields made keyword indexes by this object since the collection last changed whole
    #: (``count_values`` asks the engine once per field, not on every count).
    _indexed: frozenset[str] = frozenset()

    def _forget(self) -> None:
        """The collection was created, dropped or replaced: read its vectors and indexes anew."""
        self._dims = None
        self._indexed = frozenset()

    def _known(self, refresh: bool = False) -> dict[str, int]:
        self._check_open()
        if self._dims is None or refresh:
            self._dims = {name: dim for name, (dim, _) in self._read_vectors().items() if name}
        return self._dims

    def _dim_of(self, name: str) -> int:
        known = self._known()
        if name not in known:
            known = self._known(refresh=True)  # another writer may have added it
        if name not in known:
            if not known:
                raise UnknownNameError(
                    f"unknown vector {name!r}: the index {self.description} has no vectors yet; "
                    "ingest something first (histocli ingest)"
                )
            raise unknown_name("vector", name, list(known))
        return known[name]

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInputError(f"the store {self.description} is closed; open it again")

    # -- public API ------------------------------------------------------------------------------

    def vectors(self) -> dict[str, int]:
        return dict(self._known(refresh=True))

    def ensure_vectors(self, dims: Mapping[str, int]) -> list[str]:
        if not isinstance(dims, Mapping) or not dims:
            raise InvalidInputError(
                "ensure_vectors needs a mapping of encoder name -> dimension, e.g. {'nnclr': 512}"
            )
        wanted = {check_name(name): check_dim(name, dim) for name, dim in dims.items()}
        self._check_open()
        existing = self._read_vectors()
        for name, dim in wanted.items():
            if name not in existing:
                continue
            old_dim, distance = existing[name]
            if old_dim != dim:
                raise InvalidInputError(
                    f"vector {name!r} already exists with dimension {old_dim}, not {dim}; "
                    "register the new encoder under another name or drop the index and re-ingest"
                )
            if distance.lower() != "cosine":
                raise InvalidInputError(
                    f"vector {name!r} already exists with {distance} distance, histo needs cosine; "
                    "drop the index and re-ingest"
                )
        added = [name for name in wanted if name not in existing]
        if not existing:
            self._create(wanted)
        else:
            for name in added:
                self._add_vector(name, wanted[name])
        self._forget()
        self._ensure_indexes(FILTER_FIELDS + tuple(stamp_field(n) for n in sorted({*existing, *wanted})))
        return added

    def upsert(self, points: Iterable[Point]) -> int:
        self._check_open()
        merged: dict[str, _Write] = {}
        for point in points:
            if not isinstance(point, Point):
                raise InvalidInputError(f"upsert takes histo.store.Point objects, got {type(point).__name__}")
            pid = canonical_id(point.id)
            if not isinstance(point.vectors, Mapping):
                raise InvalidInputError(f"point {pid}: vectors must be a mapping name -> vector")
            vectors = {
                check_name(name): as_vector(name, vec, self._dim_of(name))
                for name, vec in point.vectors.items()
            }
            payload = None if point.payload is None else self._check_payload(pid, point.payload)
            if pid in merged:  # the same id twice in one call: the later one wins, name by name
                earlier = merged[pid]
                earlier.vectors.update(vectors)
                if payload is not None:
                    earlier.payload = payload
            else:
                merged[pid] = _Write(pid, vectors, payload)
        if not merged:
            return 0
        if not self._known():
            raise InvalidInputError(
                f"the index {self.description} has no vectors yet; call ensure_vectors(...) before upsert"
            )
        writes = list(merged.values())
        for batch in chunks(writes, _WRITE_CHUNK):
            existing = self._existing([w.id for w in batch])
            fresh = [w for w in batch if w.id not in existing]
            old = [w for w in batch if w.id in existing]
            if fresh:
                self._insert(fresh)
            if old:
                self._merge(old)
        return len(writes)

    @staticmethod
    def _check_payload(pid: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(payload, Mapping):
            raise InvalidInputError(f"point {pid}: payload must be a dict, got {type(payload).__name__}")
        out = dict(payload)
        for key in FILTER_FIELDS:
            value = out.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(
                    f"point {pid}: payload field {key!r} must be a string (it is a keyword index), "
                    f"got {value!r}"
                )
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidInputError(f"point {pid}: payload field {key!r} is {value}; JSON has no NaN")
        return out

    def search(
        self,
        vector_name: str,
        query_vector: VectorLike,
        limit: int = 10,
        filter: SearchFilter | None = None,
        *,
        exact: bool = False,
    ) -> list[Hit]:
        return self.query([Leg(vector_name, query_vector)], limit, filter, exact=exact)

    def query(
        self,
        legs: Sequence[Leg],
        limit: int = 10,
        filter: SearchFilter | None = None,
        *,
        fusion: str = "rrf",
        depth: int | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """The ``limit`` best points for one leg, or for several legs fused by ``fusion`` over
        each leg's ``depth`` (default ``max(limit, FUSION_DEPTH)``) best; every hit names the legs
        whose list held it. Ties are ordered by id, so that both backends agree."""
        self._check_open()
        if not legs:
            raise InvalidInputError("a query needs at least one vector to search with")
        checked = tuple(self._check_leg(leg) for leg in legs)
        if len({leg.using for leg in checked}) != len(checked):
            raise InvalidInputError("each named vector may appear once in a fused query")
        if fusion not in FUSIONS:
            raise unknown_name("fusion", fusion, list(FUSIONS))
        limit = check_limit(limit)
        flt = self._check_filter(filter)
        if len(checked) == 1:
            (hits,) = self._query_many([Plan(checked, limit)], flt.must, flt.must_not, bool(exact))
            return _in_order(hits, (checked[0].using,))
        depth = check_limit(depth) if depth is not None else max(limit, FUSION_DEPTH)
        # RRF ties points at the same rank of different lists: fetch past them, cut after ordering
        plans = [Plan(checked, limit + len(checked), fusion, depth)]
        plans += [Plan((leg,), depth, payload=False) for leg in checked]
        fused, *lists = self._query_many(plans, flt.must, flt.must_not, bool(exact))
        members = [(leg.using, {hit.id for hit in found}) for leg, found in zip(checked, lists, strict=True)]
        return [
            dataclasses.replace(hit, sources=tuple(name for name, ids in members if hit.id in ids))
            for hit in _in_order(fused, ())[:limit]
        ]

    def _check_leg(self, leg: Leg) -> Leg:
        """A leg with its vectors checked and made float lists; ``average_vector`` turned into
        the nearest query it stands for."""
        if not isinstance(leg, Leg):
            raise InvalidInputError(f"query legs are histo.store.Leg objects, got {type(leg).__name__}")
        name = check_name(leg.using)
        dim = self._dim_of(name)
        if leg.strategy not in STRATEGIES:
            raise unknown_name("recommendation strategy", leg.strategy, list(STRATEGIES))
        if leg.diversity is not None and not (0.0 <= leg.diversity <= 1.0):
            raise InvalidInputError(f"diversity must be from 0 to 1, got {leg.diversity!r}")
        if not leg.is_recommend:
            if leg.negatives:
                raise InvalidInputError("a recommendation needs at least one positive example")
            if leg.vector is None:
                raise InvalidInputError(f"the {name!r} part of the query has no vector")
            return Leg(name, as_vector(name, leg.vector, dim), diversity=leg.diversity)
        if leg.vector is not None or leg.diversity is not None:
            raise InvalidInputError("a recommendation takes examples only: no query vector, no diversity")
        positives = tuple(as_vector(name, v, dim) for v in leg.positives)
        negatives = tuple(as_vector(name, v, dim) for v in leg.negatives)
        if leg.strategy != "average_vector":
            return Leg(name, positives=positives, negatives=negatives, strategy=leg.strategy)
        mean_pos = np.mean(np.asarray(positives), axis=0)
        target = 2 * mean_pos - np.mean(np.asarray(negatives), axis=0) if negatives else mean_pos
        return Leg(name, as_vector(name, target, dim))

    @staticmethod
    def _check_filter(filter: SearchFilter | None) -> SearchFilter:
        if filter is None:
            return SearchFilter()
        if not isinstance(filter, SearchFilter):
            raise InvalidInputError(f"filter must be a histo.store.SearchFilter, got {type(filter).__name__}")
        return filter

    def retrieve(
        self, ids: Iterable[str | uuid.UUID], with_vectors: bool | Sequence[str] = False
    ) -> list[Record]:
        self._check_open()
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
        selector: bool | list[str]
        if isinstance(with_vectors, bool):
            selector = with_vectors
        else:
            names = [check_name(n) for n in with_vectors]
            for name in names:
                self._dim_of(name)
            selector = names
        if not wanted or not self._known():
            return []
        found: dict[str, Record] = {}
        for batch in chunks(wanted, _ID_CHUNK):
            for record in self._retrieve(batch, selector):
                found[record.id] = record
        return [found[i] for i in wanted if i in found]

    def missing_vectors(self, ids: Iterable[str | uuid.UUID], names: Iterable[str]) -> dict[str, set[str]]:
        self._check_open()
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
        names = list(dict.fromkeys(check_name(n) for n in names))
        for name in names:
            self._dim_of(name)
        missing: dict[str, set[str]] = {}
        if not wanted or not names:
            return missing
        for batch in chunks(wanted, _ID_CHUNK):
            existing = self._existing(batch)
            for pid in batch:
                if pid not in existing:
                    missing[pid] = set(names)
            for name in names:
                for pid in self._lacking(batch, name):
                    missing.setdefault(pid, set()).add(name)
        return {pid: missing[pid] for pid in wanted if pid in missing}

    def scroll(
        self, filter: SearchFilter | None = None, with_vectors: bool | Sequence[str] = False, page: int = 256
    ) -> Iterator[Record]:
        self._check_open()
        flt = self._check_filter(filter)
        selector: bool | list[str] = with_vectors if isinstance(with_vectors, bool) else list(with_vectors)
        if not isinstance(selector, bool):
            for name in selector:
                self._dim_of(check_name(name))
        if not self._known():
            return
        offset: Any = None
        while True:
            records, offset = self._scroll_page(flt.must, flt.must_not, selector, offset, check_limit(page))
            yield from records
            if offset is None:
                return

    def count(self, filter: SearchFilter | None = None, *, vector: str | None = None) -> int:
        self._check_open()
        flt = self._check_filter(filter)
        if vector is not None:
            self._dim_of(check_name(vector))
        if not self._known():
            return 0
        return self._count(flt.must, flt.must_not, has_vector=vector)

    def count_values(
        self, key: str, filter: SearchFilter | None = None, where: Mapping[str, str] | None = None
    ) -> dict[str, int]:
        """Exact counts of the values of payload field ``key`` among the points ``filter`` lets
        through and whose fields equal ``where`` (field -> value), value -> points ({} without a
        collection). Fields get a keyword index first where they have none (the engine counts
        values through one)."""
        self._check_open()
        flt = self._check_filter(filter)
        extra = {check_name(k): v for k, v in (where or {}).items()}
        for key_name, value in extra.items():
            _check_value(key_name, value)
        if not self._known():
            return {}
        fields = (key, *extra)
        if not self._indexed.issuperset(fields):
            self._ensure_indexes(fields)
            self._indexed = self._indexed | set(fields)
        must = flt.must + tuple((name, (value,)) for name, value in extra.items())
        return dict(sorted(self._facet(key, must, flt.must_not).items()))

    def stats(self) -> dict[str, Any]:
        self._check_open()
        known = self._known(refresh=True)
        if not known:
            return {"collection": self.collection, "points": 0, "vectors": {}, "datasets": {}, "labels": {}}
        vectors = {
            name: {"dim": dim, "points": self._count((), (), has_vector=name)}
            for name, dim in sorted(known.items())
        }
        datasets = dict(sorted(self._facet("dataset", ()).items()))
        labels = {
            dataset: dict(sorted(self._facet("label", (("dataset", (dataset,)),)).items()))
            for dataset in datasets
        }
        return {
            "collection": self.collection,
            "points": self._count((), ()),
            "quantization": self._read_quantization(),
            "vectors": vectors,
            "datasets": datasets,
            "labels": labels,
            "layouts": {dataset: self.count_values("layout", SearchFilter(dataset)) for dataset in datasets},
            "artifacts": self._artifacts(known),
        }

    def _artifacts(self, known: Mapping[str, int]) -> dict[str, dict[str, int]]:
        """Per named vector, how many of its vectors each artifact made (by digest)."""
        return {name: self.count_values(stamp_field(name)) for name in sorted(known)}

    def inventory(self) -> dict[str, Any]:
        self._check_open()
        known = self._known(refresh=True)
        datasets = dict(sorted(self._facet("dataset", ()).items())) if known else {}

        def per_vector(must: Conditions) -> dict[str, int]:
            return {name: self._count(must, (), has_vector=name) for name in sorted(known)}

        return {
            "collection": self.collection,
            "points": self._count((), ()) if known else 0,
            "vectors": dict(sorted(known.items())),
            "vector_points": per_vector(()),
            "datasets": {
                dataset: {"points": points, "vectors": per_vector((("dataset", (dataset,)),))}
                for dataset, points in datasets.items()
            },
            "data_roots": {dataset: self._roots(dataset) for dataset in datasets},
            "artifacts": self._artifacts(known),
        }

    def _roots(self, dataset: str, most: int = 16) -> list[str]:
        """The distinct payload ``root`` values (ingestion folders) of a data set, one scan each."""
        roots: list[str] = []
        while len(roots) < most:
            must_not: Conditions = (("root", tuple(roots)),) if roots else ()
            records, _ = self._scroll_page((("dataset", (dataset,)),), must_not, False, None, 1)
            root = records[0].payload.get("root") if records else None
            if not isinstance(root, str) or not root or root in roots:
                return sorted(roots)
            roots.append(root)
        return sorted(roots)

    def scroll_page(
        self, offset: str | None, limit: int, with_vectors: bool = True
    ) -> tuple[list[Record], str | None]:
        self._check_open()
        if not self._known():
            return [], None
        start = None if offset is None else canonical_id(offset)
        records, following = self._scroll_page((), (), bool(with_vectors), start, check_limit(limit))
        return records, None if following is None else canonical_id(following)

    @abc.abstractmethod
    def snapshot(self, out: Path, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    def restore(self, snapshot: Path, manifest: Mapping[str, Any]) -> None: ...

    def drop(self) -> None:
        self._check_open()
        self._drop()
        self._forget()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({self.description!r}, collection={self.collection!r}, {state})"

    def delete(self, ids: Iterable[str | uuid.UUID]) -> int:
        """Remove points by id (``ingest --sync``, ``index prune``); returns how many existed."""
        self._check_open()
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
        if not wanted or not self._known():
            return 0
        removed = 0
        for batch in chunks(wanted, _ID_CHUNK):
            existing = sorted(self._existing(batch))
            if existing:
                self._delete(existing)
                removed += len(existing)
        return removed
