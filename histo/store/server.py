"""The distributed store: a Qdrant server (or cluster) through ``qdrant-client``.

``ServerStore.connect(url, api_key)`` is the production path. ``ServerStore.in_memory()`` and
``ServerStore.local(path)`` use qdrant-client's local mode, a brute-force numpy stand-in for the
server API: right for tests (the congruence tests compare it with ``EdgeStore``), far too slow to
serve (DESIGN.md §1), and it ignores keyword payload indexes.

Adding a named vector to an existing collection uses ``create_vector_name``
(``PUT /collections/{name}/vectors/{vector}``), which needs a server recent enough to have it.
Concurrent writers are fine, with one caveat: two writers that upsert the *same new* point at the
same moment with different vectors may race (the later insert wins); give one task all the
encoders of a tile, or ingest encoders one after the other.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc  # a dependency of qdrant-client; used with prefer_grpc=True
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from histo.errors import (
    HistoError,
    InvalidInputError,
    NotFoundError,
    StoreLockedError,
    StoreUnavailableError,
)
from histo.store import archive
from histo.store.base import (
    DEFAULT_COLLECTION,
    POINT_ID,
    RRF_K,
    Conditions,
    Hit,
    IndexOptions,
    Leg,
    Plan,
    Record,
    StoreBase,
    _Write,
    check_collection,
    mmr_candidates,
    quantization_name,
    request_fields,
)

_FACET_LIMIT = 100_000
_START_HINT = "start it (docker compose up qdrant) or unset HISTO_QDRANT__URL to use the embedded index"


def _match(values: tuple[str, ...]) -> qm.MatchValue | qm.MatchAny:
    return qm.MatchValue(value=values[0]) if len(values) == 1 else qm.MatchAny(any=list(values))


def _filter(
    must: Conditions,
    must_not: Conditions,
    extra_must: Sequence[qm.Condition] = (),
    extra_must_not: Sequence[qm.Condition] = (),
) -> qm.Filter | None:
    pos: list[qm.Condition] = [_condition(key, values) for key, values in must]
    neg: list[qm.Condition] = [_condition(key, values) for key, values in must_not]
    pos.extend(extra_must)
    neg.extend(extra_must_not)
    if not pos and not neg:
        return None
    return qm.Filter(must=pos or None, must_not=neg or None)


def _condition(key: str, values: tuple[str, ...]) -> qm.Condition:
    if key == POINT_ID:
        return qm.HasIdCondition(has_id=list(values))
    return qm.FieldCondition(key=key, match=_match(values))


def _leg_query(leg: Leg, limit: int) -> Any:
    if leg.is_recommend:
        strategy = (
            qm.RecommendStrategy.SUM_SCORES
            if leg.strategy == "sum_scores"
            else qm.RecommendStrategy.BEST_SCORE
        )
        examples = qm.RecommendInput(
            positive=list(leg.positives), negative=list(leg.negatives), strategy=strategy
        )
        return qm.RecommendQuery(recommend=examples)
    if leg.diversity is not None:
        mmr = qm.Mmr(diversity=leg.diversity, candidates_limit=mmr_candidates(limit))
        return qm.NearestQuery(nearest=leg.vector, mmr=mmr)
    return qm.NearestQuery(nearest=leg.vector)


def _request(plan: Plan, flt: qm.Filter | None, params: qm.SearchParams | None) -> qm.QueryRequest:
    """One leg as it is, or several as prefetches fused by RRF / DBSF (the filter on each)."""
    common = request_fields(plan, flt)
    if len(plan.legs) == 1:
        leg = plan.legs[0]
        return qm.QueryRequest(query=_leg_query(leg, plan.limit), using=leg.using, params=params, **common)
    prefetch = [
        qm.Prefetch(
            query=_leg_query(leg, plan.depth), using=leg.using, limit=plan.depth, filter=flt, params=params
        )
        for leg in plan.legs
    ]
    fusion = (
        qm.RrfQuery(rrf=qm.Rrf(k=RRF_K)) if plan.fusion == "rrf" else qm.FusionQuery(fusion=qm.Fusion.DBSF)
    )
    return qm.QueryRequest(query=fusion, prefetch=prefetch, **common)


def _vectors_of(value: Any) -> dict[str, list[float]]:
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(name): [float(x) for x in vec] for name, vec in value.items()}
    return {"": [float(x) for x in value]}


class ServerStore(StoreBase):
    """A collection in Qdrant reached through a ``QdrantClient`` (server, or local mode for tests)."""

    def __init__(
        self,
        client: QdrantClient,
        collection: str = DEFAULT_COLLECTION,
        *,
        description: str = "qdrant",
        owns_client: bool = True,
        options: IndexOptions | None = None,
    ) -> None:
        self.collection = check_collection(collection)
        self.options = options or IndexOptions()
        self.client = client
        self._description = description
        self._owns_client = owns_client
        self._local = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"
        self._payload_indexed: set[str] = set()
        with self._api("connect"):
            self.client.collection_exists(self.collection)  # fail now, not at the first search

    # -- constructors ----------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        url: str,
        api_key: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        *,
        timeout: float = 10.0,
        prefer_grpc: bool = False,
        options: IndexOptions | None = None,
    ) -> ServerStore:
        """Connect to a Qdrant server; ``StoreUnavailableError`` if it cannot be reached."""
        if not isinstance(url, str) or not url.strip():
            raise InvalidInputError("Qdrant URL is empty; set HISTO_QDRANT__URL, e.g. http://localhost:6333")
        try:
            # qdrant-client's own version check runs in a thread and warns even when the server is
            # down; the probe in __init__ reports that in one line, and _check_version warns.
            client = QdrantClient(
                url=url,
                api_key=api_key,
                timeout=int(timeout),
                prefer_grpc=prefer_grpc,
                check_compatibility=False,
            )
        except ValueError as exc:
            raise InvalidInputError(f"bad Qdrant URL {url!r}: {exc}; e.g. http://localhost:6333") from None
        try:
            store = cls(client, collection, description=url, options=options)
            store._check_version()
            return store
        except BaseException:
            client.close()
            raise

    def _check_version(self) -> None:
        """Warn when server and client differ by more than one minor version (as qdrant-client would)."""
        with self._api("read the server version"):
            server = str(self.client.info().version)
        client = importlib.metadata.version("qdrant-client")
        try:
            s_major, s_minor = (int(x) for x in server.split(".")[:2])
            c_major, c_minor = (int(x) for x in client.split(".")[:2])
        except ValueError:
            return
        if s_major != c_major or abs(s_minor - c_minor) > 1:
            warnings.warn(
                f"Qdrant server {server} at {self._description} and qdrant-client {client} are more than one "
                "minor version apart; upgrade the older one",
                UserWarning,
                stacklevel=3,
            )

    @classmethod
    def in_memory(
        cls, collection: str = DEFAULT_COLLECTION, options: IndexOptions | None = None
    ) -> ServerStore:
        """qdrant-client local mode in memory: the server API without a server, for tests."""
        return cls(QdrantClient(location=":memory:"), collection, description=":memory:", options=options)

    @classmethod
    def local(cls, path: str | os.PathLike[str], collection: str = DEFAULT_COLLECTION) -> ServerStore:
        """qdrant-client local mode persisted in ``path`` (one process at a time), for tests."""
        try:
            client = QdrantClient(path=os.fspath(path))
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise StoreLockedError(
                    f"the qdrant-client folder {path} is open in another process; stop it, or use a Qdrant "
                    "server (set HISTO_QDRANT__URL)"
                ) from None
            raise
        return cls(client, collection, description=os.fspath(path))

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        return self._description

    @contextlib.contextmanager
    def _api(self, action: str) -> Iterator[None]:
        """Turn transport and server errors into histo errors that say what to do."""
        where = self._description
        try:
            yield
        except HistoError:
            raise
        except ResponseHandlingException as exc:
            cause = getattr(exc, "source", exc)
            raise StoreUnavailableError(
                f"cannot reach Qdrant at {where} to {action} ({type(cause).__name__}: {cause}); {_START_HINT}"
            ) from None
        except UnexpectedResponse as exc:
            raise self._http_error(action, exc) from None
        except grpc.RpcError as exc:
            raise self._grpc_error(action, exc) from None
        except (ConnectionError, TimeoutError) as exc:
            raise StoreUnavailableError(
                f"cannot reach Qdrant at {where} to {action} ({exc}); {_START_HINT}"
            ) from None

    def _http_error(self, action: str, exc: UnexpectedResponse) -> HistoError:
        where, status = self._description, exc.status_code or 0
        try:
            detail = str(exc.structured().get("status", {}).get("error", "")) or exc.reason_phrase
        except (ValueError, AttributeError):
            detail = exc.reason_phrase
        detail = detail.splitlines()[0] if detail else f"HTTP {status}"
        if status in (401, 403):
            return StoreUnavailableError(
                f"Qdrant at {where} refused the request to {action} (HTTP {status}); "
                "set HISTO_QDRANT__API_KEY"
            )
        if status == 404:
            return NotFoundError(f"Qdrant at {where} could not {action}: {detail}")
        if 400 <= status < 500:
            return InvalidInputError(f"Qdrant at {where} rejected the request to {action}: {detail}")
        return StoreUnavailableError(
            f"Qdrant at {where} failed to {action} (HTTP {status}: {detail}); check the server's logs"
        )

    def _grpc_error(self, action: str, exc: grpc.RpcError) -> HistoError:
        where = self._description
        code = exc.code() if hasattr(exc, "code") else None
        name = getattr(code, "name", "UNKNOWN")
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return StoreUnavailableError(
                f"Qdrant at {where} refused the request to {action} ({name}); set HISTO_QDRANT__API_KEY"
            )
        if name == "INVALID_ARGUMENT":
            return InvalidInputError(f"Qdrant at {where} rejected the request to {action}: {detail}")
        if name == "NOT_FOUND":
            return NotFoundError(f"Qdrant at {where} could not {action}: {detail}")
        return StoreUnavailableError(
            f"cannot reach Qdrant at {where} to {action} ({name}: {detail}); {_START_HINT}"
        )

    def _exists(self) -> bool:
        with self._api("check the collection"):
            return bool(self.client.collection_exists(self.collection))

    # -- primitives ------------------------------------------------------------------------------

    def _read_vectors(self) -> dict[str, tuple[int, str]]:
        if not self._exists():
            return {}
        with self._api("read the collection"):
            info = self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if vectors is None:
            return {}
        if isinstance(vectors, qm.VectorParams):
            return {"": (vectors.size, str(vectors.distance.value))}
        return {name: (params.size, str(params.distance.value)) for name, params in vectors.items()}

    def _read_quantization(self) -> str:
        with self._api("read the collection"):
            config = self.client.get_collection(self.collection).config.quantization_config
        return quantization_name(config.model_dump() if config is not None else None)

    def _create(self, dims: Mapping[str, int]) -> None:
        """As ``EdgeStore._config``: float vectors on disk when a quantized copy serves the search."""
        on_disk = True if self.options.quantized else None
        config = {
            name: qm.VectorParams(size=dim, distance=qm.Distance.COSINE, on_disk=on_disk)
            for name, dim in dims.items()
        }
        try:
            with self._api("create the collection"):
                self.client.create_collection(
                    self.collection,
                    vectors_config=config,
                    hnsw_config=_hnsw(self.options),
                    quantization_config=_quantization(self.options),
                )
        except InvalidInputError:
            # another writer created it first (409/400 "already exists"): add what is missing
            have = self._read_vectors()
            if not have:
                raise
            for name, dim in dims.items():
                if name not in have:
                    self._add_vector(name, dim)
        self._payload_indexed.clear()

    def _add_vector(self, name: str, dim: int) -> None:
        config = qm.DenseVectorNameConfig(dense=qm.DenseVectorConfig(size=dim, distance=qm.Distance.COSINE))
        try:
            with self._api(f"add vector {name!r}"):
                self.client.create_vector_name(self.collection, name, config, wait=True)
        except NotFoundError:
            raise StoreUnavailableError(
                f"Qdrant at {self._description} cannot add the named vector {name!r} to an existing "
                "collection; "
                "upgrade the server (it needs the create-named-vector API) or re-create the collection"
            ) from None

    def _ensure_indexes(self, fields: Sequence[str]) -> None:
        with self._api("read payload indexes"):
            have = set(self.client.get_collection(self.collection).payload_schema or {})
        for key in fields:
            if key in have or key in self._payload_indexed:
                continue
            with self._api(f"index payload field {key!r}"), warnings.catch_warnings():
                # local mode warns that it has no payload indexes; the server builds them
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                self.client.create_payload_index(
                    self.collection, key, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
                )
            if self._local:
                self._payload_indexed.add(key)

    def _existing(self, ids: Sequence[str]) -> set[str]:
        with self._api("look up points"):
            records = self.client.retrieve(self.collection, list(ids), with_payload=False, with_vectors=False)
        return {str(r.id) for r in records}

    def _insert(self, writes: Sequence[_Write]) -> None:
        points = [qm.PointStruct(id=w.id, vector=dict(w.vectors), payload=w.payload or {}) for w in writes]
        with self._api("write points"):
            self.client.upsert(self.collection, points=points, wait=True)

    def _merge(self, writes: Sequence[_Write]) -> None:
        ops: list[qm.UpdateOperation] = []
        with_vectors = [qm.PointVectors(id=w.id, vector=dict(w.vectors)) for w in writes if w.vectors]
        if with_vectors:
            ops.append(qm.UpdateVectorsOperation(update_vectors=qm.UpdateVectors(points=with_vectors)))
        ops.extend(
            qm.OverwritePayloadOperation(overwrite_payload=qm.SetPayload(payload=w.payload, points=[w.id]))
            for w in writes
            if w.payload is not None
        )
        if ops:
            with self._api("update points"):
                self.client.batch_update_points(self.collection, update_operations=ops, wait=True)

    def _delete(self, ids: Sequence[str]) -> None:
        with self._api("delete points"):
            self.client.delete(self.collection, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def _query_many(
        self, plans: Sequence[Plan], must: Conditions, must_not: Conditions, exact: bool
    ) -> list[list[Hit]]:
        flt = _filter(must, must_not)
        # local mode is brute force already, and warns on every query given graph parameters
        params = _search_params(exact, flt is not None, self.options) if exact or not self._local else None
        requests = [_request(plan, flt, params) for plan in plans]
        with self._api("search"):  # one round trip for the fused query and its legs' lists
            responses = self.client.query_batch_points(self.collection, requests=requests)
        return [
            [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]
            for response in responses
        ]

    def _retrieve(self, ids: Sequence[str], with_vectors: bool | list[str]) -> list[Record]:
        with self._api("retrieve points"):
            records = self.client.retrieve(
                self.collection, list(ids), with_payload=True, with_vectors=with_vectors
            )
        return [Record(str(r.id), dict(r.payload or {}), _vectors_of(r.vector)) for r in records]

    def _scroll_page(
        self, must: Conditions, must_not: Conditions, with_vectors: bool | list[str], offset: Any, limit: int
    ) -> tuple[list[Record], Any]:
        with self._api("scroll points"):
            records, next_offset = self.client.scroll(
                self.collection,
                scroll_filter=_filter(must, must_not),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [Record(str(r.id), dict(r.payload or {}), _vectors_of(r.vector)) for r in records], next_offset

    def _lacking(self, ids: Sequence[str], name: str) -> set[str]:
        flt = _filter((), (), [qm.HasIdCondition(has_id=list(ids))], [qm.HasVectorCondition(has_vector=name)])
        found: set[str] = set()
        offset: Any = None
        while True:
            with self._api("scan points"):
                records, offset = self.client.scroll(
                    self.collection,
                    scroll_filter=flt,
                    limit=len(ids),
                    offset=offset,
                    with_payload=False,
                    with_vectors=False,
                )
            found.update(str(r.id) for r in records)
            if offset is None:
                return found

    def _count(self, must: Conditions, must_not: Conditions, has_vector: str | None = None) -> int:
        extra = [qm.HasVectorCondition(has_vector=has_vector)] if has_vector else []
        if not self._exists():
            return 0
        with self._api("count points"):
            return int(
                self.client.count(
                    self.collection, count_filter=_filter(must, must_not, extra), exact=True
                ).count
            )

    def _facet(self, key: str, must: Conditions, must_not: Conditions = ()) -> dict[str, int]:
        with self._api(f"count values of {key!r}"):
            response = self.client.facet(
                self.collection, key, facet_filter=_filter(must, must_not), limit=_FACET_LIMIT, exact=True
            )
        return {str(hit.value): int(hit.count) for hit in response.hits if hit.count > 0}

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self, out: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Every point read through the API into a ``points`` snapshot: qdrant-client's local mode
        has no snapshots, a server keeps its own on the server's disk, and this one restores into
        either backend. Searches write nothing; the inventory is taken before and after the copy,
        and a snapshot during which something wrote (an ingestion) is refused."""
        self._check_open()
        before = self.inventory()
        if not before["vectors"]:
            raise NotFoundError(
                f"the collection {self.collection!r} at {self._description} is empty; nothing to snapshot"
            )
        with archive.SnapshotWriter(Path(out)) as writer:
            written = archive.add_points(writer, self.scroll(with_vectors=True))
            after = self.inventory()
            if after != before or written != before["points"]:
                raise StoreUnavailableError(
                    f"the collection {self.collection!r} at {self._description} changed while the snapshot "
                    f"was taken ({before['points']} points before, {after['points']} after); take it again "
                    "when nothing writes to it (no ingestion running)"
                )
            engine = {"qdrant-client": importlib.metadata.version("qdrant-client")}
            return writer.finish({**manifest, **before, "kind": archive.POINTS, "engine": engine})

    def restore(self, snapshot: Path, manifest: Mapping[str, Any]) -> None:
        """Open the snapshot first (a shard is unpacked and checked beside it), then re-create the
        collection from its points and compare the inventory. A server has no rename to swap with:
        if the copy stops midway the collection is partial, and restoring again completes it."""
        self._check_open()
        with archive.open_points(Path(snapshot), manifest) as records:
            self.drop()
            archive.load_points(self, manifest["vectors"], records)
        archive.check_inventory(Path(snapshot), manifest, self.inventory())

    def _drop(self) -> None:
        if self._exists():
            with self._api("delete the collection"):
                self.client.delete_collection(self.collection)
        self._payload_indexed.clear()

    def _close(self) -> None:
        if self._owns_client:
            with contextlib.suppress(Exception):
                self.client.close()


__all__ = ["ServerStore"]


def _search_params(exact: bool, filtered: bool, options: IndexOptions) -> qm.SearchParams:
    """As ``histo.store.edge``: exact on request, ACORN behind a filter, rescoring (see there why)."""
    if exact:
        return qm.SearchParams(exact=True)
    rescore = qm.QuantizationSearchParams(rescore=True, oversampling=options.oversampling)
    acorn = qm.AcornSearchParams(enable=True) if filtered else None
    return qm.SearchParams(quantization=rescore, acorn=acorn)


def _quantization(options: IndexOptions) -> qm.QuantizationConfig | None:
    """As ``histo.store.edge``: the compressed vectors pinned in RAM."""
    pinned = qm.Memory.PINNED
    if options.quantization == "int8":
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, memory=pinned)
        )
    if options.quantization == "turbo4":
        return qm.TurboQuantization(
            turbo=qm.TurboQuantQuantizationConfig(bits=qm.TurboQuantBitSize.BITS4, memory=pinned)
        )
    if options.quantization == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(memory=pinned))
    return None


def _hnsw(options: IndexOptions) -> qm.HnswConfigDiff | None:
    return None if options.payload_m is None else qm.HnswConfigDiff(payload_m=options.payload_m)
