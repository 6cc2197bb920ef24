"""The embedded store: a ``qdrant-edge-py`` shard on disk, the real Qdrant engine in-process.

Layout of the folder the caller gives (``HISTO_HOME/index``)::

    index/
      .histo-store.lock   flock'd by the owner process; holds its pid, host and command
      histo/              the shard of collection "histo" (edge_config.json, wal/, segments/)

One process owns the folder. A second opener, in another process or this one, gets
``StoreLockedError`` naming the owner and the way out. The lock is an ``fcntl.flock``, which the
kernel drops when its process dies, so a lock file left by a dead process never blocks. (The engine
locks its WAL as well, but its error, ``Can't init WAL: Kind(WouldBlock)``, names nobody.)

A flock belongs to the open file, and ``fork`` shares open files: a child forked while the store
is open (a ``DataLoader`` worker of ``histocli ingest``) would hold both locks too, and outlive a
parent killed with SIGKILL — torch's orphaned workers can hang for good — leaving the index locked
by nobody anyone can name. So a forked child lets go of its copies at once (:func:`_let_go_in_child`).

What the engine offers and this module relies on: named dense vectors added to a live shard
(``UpdateOperation.create_dense_vector``, persisted in ``edge_config.json``), keyword payload
indexes, exact facets over indexed fields, count, scroll with has-id / has-vector conditions and
``optimize()`` to build HNSW indexes in-process (the shard has no background optimiser).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import json
import os
import shutil
import socket
import sys
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

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

LOCK_NAME = ".histo-store.lock"
_FACET_LIMIT = 100_000
_WAY_OUT = (
    "stop that process, or, if it is histocli serve, go through it with --server HOST:PORT (the address "
    "it printed), or use a Qdrant server (set HISTO_QDRANT__URL)"
)


# ------------------------------------------------------------------------------------------------
# Owner lock
# ------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OwnerLock:
    """An exclusive ``flock`` on a file that records who holds it (pid, host, command)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot open the lock file {self.path}: {exc.strerror}; check the folder's permissions"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(self._owner_message()) from None
            raise StoreUnavailableError(f"cannot lock {self.path}: {exc.strerror}") from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:200] or sys.executable,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._fd = fd

    def announce(self, **serves: str) -> None:
        """Record in the lock file what the owner serves (``grpc="127.0.0.1:50051"`` or
        ``web="http://127.0.0.1:8080"``), so that another process told the index is in use
        can say where to go instead."""
        if self._fd is None:
            return
        owner = {**self.owner(), "serves": dict(serves)}
        data = json.dumps(owner).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def forget_in_child(self) -> None:
        """In a forked child: drop this process's copy of the locked file without unlocking it.

        ``flock(LOCK_UN)`` or truncating would act on the file the parent shares and still holds;
        closing the copy only means the lock ends with the parent, as it should.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a stale record must not name a process that has let go
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def owner(self) -> dict[str, Any]:
        """What the lock file says about its holder ({} when it says nothing readable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _owner_message(self) -> str:
        owner = self.owner()
        pid, host, command = owner.get("pid"), owner.get("host"), owner.get("command")
        if not isinstance(pid, int):
            who = "another process (it did not record its pid)"
        elif pid == os.getpid() and host == socket.gethostname():
            return (
                f"{self.what} is already open in this process (pid {pid}); "
                "close the other store first or share one store object"
            )
        else:
            who = f"pid {pid}"
            if host:
                who += f" on {host}"
            if command:
                who += f" ({command})"
            if host == socket.gethostname() and not _pid_alive(pid):
                who += ", which has exited; a child it started may still hold the lock"
        return f"{self.what} is in use by {who}; {_way_out(owner.get('serves'))}"


def _way_out(serves: object) -> str:
    """What to do about an owned index: go through the server that owns it, or stop the owner."""
    serves = serves if isinstance(serves, dict) else {}
    grpc, web = serves.get("grpc"), serves.get("web")
    if isinstance(grpc, str) and grpc:
        return (
            f"it is the search service at {grpc}: go through it with --server {grpc} "
            "(histocli search, web, heatmap, index stats, index snapshot), or stop it"
        )
    if isinstance(web, str) and web:
        return (
            f"it is the search page at {web}: search there, or stop it (to share the index between "
            "the page and the command line, run histocli serve, then give each of them --server HOST:PORT)"
        )
    return _WAY_OUT


#: Stores open in this process, so that a forked child can let go of their locks.
_OPEN_STORES: weakref.WeakSet[EdgeStore] = weakref.WeakSet()


def _fds_under(folder: Path) -> list[int]:
    """This process's descriptors open on files under ``folder`` (Linux ``/proc``; else none)."""
    found: list[int] = []
    root = folder.resolve()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                target = Path(os.readlink(f"/proc/self/fd/{name}"))
                if target == root or root in target.parents:
                    found.append(int(name))
    return found


def _let_go_in_child() -> None:
    """After ``fork``, in the child: drop the copies of the index's locked files (module docstring).

    The engine's own descriptors (its WAL lock among them) are pointed at ``/dev/null`` rather
    than closed, so their numbers stay valid for an engine object the child never uses (its calls
    are refused there) and can never be reused for another file under it.
    """
    stores = list(_OPEN_STORES)
    if not stores:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for store in stores:
            store._lock.forget_in_child()
            for fd in _fds_under(store.path):
                if fd != null:
                    with contextlib.suppress(OSError):
                        os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_let_go_in_child)


# ------------------------------------------------------------------------------------------------
# Translation to the engine's types
# ------------------------------------------------------------------------------------------------


def _match(values: tuple[str, ...]) -> qe.MatchValue | qe.MatchAny:
    return qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(list(values))


def _filter(
    must: Conditions,
    must_not: Conditions,
    extra_must: Sequence[Any] = (),
    extra_must_not: Sequence[Any] = (),
) -> qe.Filter | None:
    pos: list[Any] = [_condition(key, values) for key, values in must]
    neg: list[Any] = [_condition(key, values) for key, values in must_not]
    pos.extend(extra_must)
    neg.extend(extra_must_not)
    if not pos and not neg:
        return None
    return qe.Filter(must=pos or None, must_not=neg or None)


def _condition(key: str, values: tuple[str, ...]) -> Any:
    if key == POINT_ID:
        return qe.HasIdCondition(set(values))
    return qe.FieldCondition(key=key, match=_match(values))


def _search_params(exact: bool, filtered: bool, options: IndexOptions) -> qe.SearchParams:
    """Exact on request; with a filter, ACORN (Qdrant >= 1.16): plain filtered HNSW lost up to
    30 % of the true top 10 behind a dataset + label filter at 100k points (``python -m benchmarks
    run --only search``); ACORN restores it at about twice the cost, and only when the filter is
    selective (above its ``max_selectivity`` Qdrant keeps the plain graph walk). A quantized index
    rescores ``oversampling`` x limit candidates with the float vectors (ignored when unquantized)."""
    if exact:
        return qe.SearchParams(exact=True)
    rescore = qe.QuantizationSearchParams(rescore=True, oversampling=options.oversampling)
    acorn = qe.AcornSearchParams(enable=True) if filtered else None
    return qe.SearchParams(quantization=rescore, acorn=acorn)


def _quantization(options: IndexOptions) -> Any:
    """The engine's config for ``options.quantization``; the compressed vectors pinned in RAM."""
    pinned = qe.Memory.Pinned
    if options.quantization == "int8":  # the 0.99 quantile clips outliers, as Qdrant's docs advise
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, memory=pinned)
    if options.quantization == "turbo4":
        return qe.TurboQuantQuantizationConfig(bits=qe.TurboQuantBitSize.Bits4, memory=pinned)
    if options.quantization == "binary":
        return qe.BinaryQuantizationConfig(memory=pinned)
    return None


def _hnsw(options: IndexOptions) -> qe.HnswIndexConfig | None:
    """Qdrant's default graph (m=16, ef_construct=100), plus per-value links when asked."""
    if options.payload_m is None:
        return None
    return qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000, payload_m=options.payload_m)


def _leg_query(leg: Leg, limit: int) -> Any:
    if leg.is_recommend:
        examples = qe.RecommendQuery([_floats(v) for v in leg.positives], [_floats(v) for v in leg.negatives])
        if leg.strategy == "sum_scores":
            return qe.Query.RecommendSumScores(examples, using=leg.using)
        return qe.Query.RecommendBestScore(examples, using=leg.using)
    if leg.diversity is not None:  # the engine's lambda weighs relevance
        return qe.Mmr(_floats(leg.vector), 1.0 - leg.diversity, mmr_candidates(limit), using=leg.using)
    return qe.Query.Nearest(_floats(leg.vector), using=leg.using)


def _floats(vector: object) -> list[float]:
    """A checked leg's vector (``StoreBase`` made it a float list)."""
    assert isinstance(vector, list)
    return vector


def _request(plan: Plan, flt: qe.Filter | None, params: qe.SearchParams | None) -> qe.QueryRequest:
    """One leg as it is, or several as prefetches fused by RRF / DBSF (the filter on each)."""
    common = request_fields(plan, flt)
    if len(plan.legs) == 1:
        return qe.QueryRequest(query=_leg_query(plan.legs[0], plan.limit), params=params, **common)
    prefetches = [
        qe.Prefetch(limit=plan.depth, query=_leg_query(leg, plan.depth), filter=flt, params=params)
        for leg in plan.legs
    ]
    fusion = qe.Fusion.Rrf(k=RRF_K) if plan.fusion == "rrf" else qe.Fusion.Dbsf()
    # the stub types the fusion as Fusion, the engine takes its variants (as the stub's own docs show)
    return qe.QueryRequest(
        query=fusion,  # type: ignore[arg-type]
        prefetches=prefetches,
        **common,
    )


def _hits(points: Sequence[Any]) -> list[Hit]:
    return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


def _vectors_of(value: Any) -> dict[str, list[float]]:
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(name): [float(x) for x in vec] for name, vec in value.items()}
    return {"": [float(x) for x in value]}


# ------------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------------


class EdgeStore(StoreBase):
    """A collection kept in an embedded Qdrant Edge shard under ``path / collection``.

    Opening takes the folder's owner lock (``StoreLockedError`` if another process or store has
    it); ``close()`` flushes the shard and lets go. Calls are serialised by a re-entrant mutex,
    so one store object may be shared between threads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        collection: str = DEFAULT_COLLECTION,
        *,
        max_search_threads: int | None = None,
        options: IndexOptions | None = None,
    ) -> None:
        self.collection = check_collection(collection)
        self.options = options or IndexOptions()
        self.path = Path(path).expanduser().absolute()
        self._shard_dir = self.path / self.collection
        self._max_search_threads = max_search_threads
        self._mutex = threading.RLock()
        self._shard: qe.EdgeShard | None = None
        self._owner_pid = os.getpid()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create the index folder {self.path}: {exc.strerror}; "
                "set HISTO_HOME to a writable place"
            ) from None
        self._lock = OwnerLock(self.path / LOCK_NAME, f"the index at {self.path}")
        self._lock.acquire()
        _OPEN_STORES.add(self)
        try:
            if self._has_shard():
                self._shard = self._load()
        except BaseException:
            _OPEN_STORES.discard(self)
            self._lock.release()
            raise

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        return str(self.path)

    def announce(self, **serves: str) -> None:
        """Say in the owner lock what this process serves (``OwnerLock.announce``)."""
        self._lock.announce(**serves)

    @contextlib.contextmanager
    def _engine(self, action: str) -> Iterator[None]:
        """Serialise access and turn engine errors into histo errors with a way out."""
        if os.getpid() != self._owner_pid:  # a forked child (e.g. a DataLoader worker) has no engine threads
            raise StoreUnavailableError(
                f"the index at {self.path} was opened by pid {self._owner_pid}, not this forked process; "
                "open the store after forking, or in the parent only"
            )
        with self._mutex:
            try:
                yield
            except HistoError:
                raise
            except ValueError as exc:
                raise InvalidInputError(f"the embedded index refused to {action}: {exc}") from None
            except Exception as exc:
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if "WouldBlock" in text:
                    raise StoreLockedError(
                        f"the index at {self.path} is open in another program that bypassed histo's lock; "
                        f"{_WAY_OUT}"
                    ) from None
                raise StoreUnavailableError(
                    f"the embedded index at {self.path} failed to {action}: {text}; "
                    "if it persists, move the folder aside and re-ingest"
                ) from None

    def _has_shard(self) -> bool:
        return (self._shard_dir / "edge_config.json").exists() or (self._shard_dir / "segments").exists()

    def _load(self) -> qe.EdgeShard:
        with self._engine("open"):
            return qe.EdgeShard.load(str(self._shard_dir))

    def _require(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreUnavailableError(f"the index at {self.path} has no collection {self.collection!r} yet")
        return self._shard

    def _config(self, **vectors: int) -> qe.EdgeConfig:
        """Float vectors memory-mapped cold when a quantized copy serves the search, else cached."""
        memory = qe.Memory.Cold if self.options.quantized else None
        params = {
            name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=memory)
            for name, dim in vectors.items()
        }
        return qe.EdgeConfig(
            vectors=params,
            hnsw_config=_hnsw(self.options),
            quantization_config=_quantization(self.options),
            max_search_threads=self._max_search_threads,
        )

    # -- primitives ------------------------------------------------------------------------------

    def _read_vectors(self) -> dict[str, tuple[int, str]]:
        with self._mutex:
            if self._shard is None:
                return {}
            config_file = self._shard_dir / "edge_config.json"
            try:
                data = json.loads(config_file.read_text(encoding="utf-8"))
                vectors = data.get("vectors") or {}
                return {str(name): (int(v["size"]), str(v["distance"])) for name, v in vectors.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StoreUnavailableError(
                    f"cannot read the vector config {config_file}: {exc}; was the index written by "
                    "another qdrant-edge version?"
                ) from None

    def _read_quantization(self) -> str:
        config = json.loads((self._shard_dir / "edge_config.json").read_text(encoding="utf-8"))
        return quantization_name(config.get("quantization_config"))

    def _create(self, dims: Mapping[str, int]) -> None:
        with self._engine("create the collection"):
            if self._shard_dir.exists():  # leftovers of an interrupted create or drop, no segments
                shutil.rmtree(self._shard_dir)
            self._shard = qe.EdgeShard.create(str(self._shard_dir), self._config(**dims))

    def _add_vector(self, name: str, dim: int) -> None:
        """The collection's quantization covers the new vector too; its float copy stays cached
        (``create_dense_vector`` takes no memory placement), unlike those the collection began with."""
        with self._engine(f"add vector {name!r}"):
            self._require().update(qe.UpdateOperation.create_dense_vector(name, dim, qe.Distance.Cosine))

    def _ensure_indexes(self, fields: Sequence[str]) -> None:
        with self._engine("create payload indexes"):
            shard = self._require()
            have = shard.info().payload_schema
            for key in fields:
                if key not in have:
                    shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))

    def _existing(self, ids: Sequence[str]) -> set[str]:
        with self._engine("look up points"):
            if self._shard is None:
                return set()
            return {str(r.id) for r in self._shard.retrieve(list(ids), False, False)}

    def _insert(self, writes: Sequence[_Write]) -> None:
        with self._engine("write points"):
            points = [qe.Point(w.id, dict(w.vectors), w.payload or {}) for w in writes]
            self._require().update(qe.UpdateOperation.upsert_points(points))

    def _merge(self, writes: Sequence[_Write]) -> None:
        with self._engine("update points"):
            shard = self._require()
            with_vectors = [qe.PointVectors(w.id, dict(w.vectors)) for w in writes if w.vectors]
            if with_vectors:
                shard.update(qe.UpdateOperation.update_vectors(with_vectors))
            for w in writes:
                if w.payload is not None:
                    shard.update(qe.UpdateOperation.overwrite_payload([w.id], w.payload))

    def _delete(self, ids: Sequence[str]) -> None:
        with self._engine("delete points"):
            self._require().update(qe.UpdateOperation.delete_points(list(ids)))

    def _query_many(
        self, plans: Sequence[Plan], must: Conditions, must_not: Conditions, exact: bool
    ) -> list[list[Hit]]:
        flt = _filter(must, must_not)
        params = _search_params(exact, flt is not None, self.options)
        with self._engine("search"):
            shard = self._require()
            return [_hits(shard.query(_request(plan, flt, params))) for plan in plans]

    def _retrieve(self, ids: Sequence[str], with_vectors: bool | list[str]) -> list[Record]:
        with self._engine("retrieve points"):
            records = self._require().retrieve(list(ids), True, with_vectors)
        return [Record(str(r.id), dict(r.payload or {}), _vectors_of(r.vector)) for r in records]

    def _scroll_page(
        self, must: Conditions, must_not: Conditions, with_vectors: bool | list[str], offset: Any, limit: int
    ) -> tuple[list[Record], Any]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=_filter(must, must_not),
            with_payload=True,
            with_vector=with_vectors,
        )
        with self._engine("scroll points"):
            records, next_offset = self._require().scroll(request)
        return [Record(str(r.id), dict(r.payload or {}), _vectors_of(r.vector)) for r in records], next_offset

    def _lacking(self, ids: Sequence[str], name: str) -> set[str]:
        flt = _filter((), (), [qe.HasIdCondition(set(ids))], [qe.HasVectorCondition(name)])
        found: set[str] = set()
        offset: Any = None
        with self._engine("scan points"):
            shard = self._require()
            while True:
                request = qe.ScrollRequest(
                    offset=offset, limit=len(ids), filter=flt, with_payload=False, with_vector=False
                )
                records, offset = shard.scroll(request)
                found.update(str(r.id) for r in records)
                if offset is None:
                    return found

    def _count(self, must: Conditions, must_not: Conditions, has_vector: str | None = None) -> int:
        extra = [qe.HasVectorCondition(has_vector)] if has_vector else []
        with self._engine("count points"):
            if self._shard is None:
                return 0
            return int(self._shard.count(qe.CountRequest(exact=True, filter=_filter(must, must_not, extra))))

    def _facet(self, key: str, must: Conditions, must_not: Conditions = ()) -> dict[str, int]:
        with self._engine(f"count values of {key!r}"):
            response = self._require().facet(
                qe.FacetRequest(key=key, limit=_FACET_LIMIT, exact=True, filter=_filter(must, must_not))
            )
        # the engine may keep a value whose last point changed, with a count of 0
        return {str(hit.value): int(hit.count) for hit in response if hit.count > 0}

    def optimize(self) -> None:
        """Merge segments and build the HNSW indexes now (the shard has no background optimiser)."""
        self._check_open()
        with self._engine("optimise"):
            if self._shard is not None:
                self._shard.optimize()

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self, out: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Flush, then archive the shard's files and take the inventory, all under the store's
        mutex: no call of this process (the only one that may open the folder) writes in between,
        so files and counts are of one moment. Searches wait while the files are read."""
        self._check_open()
        with self._engine("take a snapshot"):
            if self._shard is None:
                raise NotFoundError(
                    f"the index at {self.path} has no collection {self.collection!r}: nothing to snapshot; "
                    "ingest something first (histocli ingest)"
                )
            self._shard.flush()
            facts = self.inventory()
            with archive.SnapshotWriter(Path(out)) as writer:
                archive.add_shard(writer, self._shard_dir)
                engine = {"qdrant-edge-py": importlib.metadata.version("qdrant-edge-py")}
                return writer.finish({**manifest, **facts, "kind": archive.SHARD, "engine": engine})

    def restore(self, snapshot: Path, manifest: Mapping[str, Any]) -> None:
        """Build the snapshot's index in a folder beside this one, open it and compare it with the
        manifest, then swap it in by renaming; a failure before the swap changes nothing."""
        self._check_open()
        staging = self.path / f".restoring-{self.collection}-{uuid.uuid4().hex[:8]}"
        try:
            built = self._build(Path(snapshot), manifest, staging)
            with self._engine("swap in the restored index"):
                self._swap(built)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _build(self, snapshot: Path, manifest: Mapping[str, Any], staging: Path) -> Path:
        """The snapshot as a shard folder under ``staging``, opened and checked."""
        if manifest["kind"] == archive.SHARD:
            archive.unpack_shard(snapshot, staging / self.collection)
            try:
                copy = EdgeStore(staging, self.collection, options=self.options)
            except HistoError as exc:
                raise archive.SnapshotError(f"{snapshot} does not open as an index ({exc})") from None
            with copy:
                archive.check_inventory(snapshot, manifest, copy.inventory())
        else:
            with (
                archive.open_points(snapshot, manifest) as records,
                EdgeStore(staging, self.collection, options=self.options) as copy,
            ):
                archive.load_points(copy, manifest["vectors"], records)
                archive.check_inventory(snapshot, manifest, copy.inventory())
        return staging / self.collection

    def _swap(self, built: Path) -> None:
        """Move the current shard aside, rename ``built`` into its place and load it; if it does
        not load, the old shard goes back (the folder is without a shard only between two renames)."""
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None
        self._forget()
        aside = self.path / f".replaced-{self.collection}-{uuid.uuid4().hex[:8]}"
        had_old = self._shard_dir.exists()
        if had_old:
            self._shard_dir.rename(aside)
        built.rename(self._shard_dir)
        try:
            self._shard = self._load()
        except BaseException:
            self._shard_dir.rename(built)
            if had_old:
                aside.rename(self._shard_dir)
                self._shard = self._load()
            raise
        if had_old:
            shutil.rmtree(aside, ignore_errors=True)

    def _drop(self) -> None:
        with self._engine("drop the collection"):
            if self._shard is not None:
                self._shard.close()
                self._shard = None
            if self._shard_dir.exists():
                doomed = self.path / f".dropping-{self.collection}-{uuid.uuid4().hex}"
                self._shard_dir.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def _close(self) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked copy: the shard and the lock belong to the parent; leave both alone
        try:
            with self._engine("close"):
                if self._shard is not None:
                    self._shard.flush()
                    self._shard.close()
                    self._shard = None
        finally:
            _OPEN_STORES.discard(self)
            self._lock.release()

    def __del__(self) -> None:  # a forgotten close() must not keep the folder locked forever
        with contextlib.suppress(Exception):
            if not self._closed and getattr(self, "_lock", None) is not None:
                self.close()


__all__ = ["LOCK_NAME", "EdgeStore", "OwnerLock"]
