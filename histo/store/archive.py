"""The snapshot file: one tar archive that both store backends write and read.

Two kinds, named in the archive's ``histo-manifest.json`` (its last member):

* ``edge-shard``: the embedded shard's own files in **Qdrant's shard-snapshot layout**
  (``edge_config.json``, ``wal/``, ``segments/<id>/files/...``), so that the engine's
  ``EdgeShard.unpack_snapshot(archive, folder)`` takes the file as it is. qdrant-edge 0.9 can unpack
  a shard snapshot but has no call that makes one; this module makes it. The engine preallocates
  its files (32 MiB WAL segments and mmap chunks, mostly holes), so those are stored as GNU sparse
  members: the archive holds the data, not the zeros (the engine's tar reader accepts them).
* ``points``: every point as one JSON line (id, payload, each named vector as base64 of its
  little-endian float32 bytes, bit for bit): any backend can load it, so a Qdrant server's
  collection (which qdrant-client's local mode cannot snapshot) and a migration share one format.

The manifest records every member's size and SHA-256 and the collection's inventory (points, per
named vector, per data set and per (data set, named vector)); ``verify`` re-reads the whole archive
against it before anything is replaced. Writing goes to a hidden ``.partial`` file renamed into
place at the end, so a snapshot that exists is complete.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import numpy as np

from histo.errors import HistoError, InvalidInputError
from histo.store.base import Point, Record

MANIFEST_NAME = "histo-manifest.json"
POINTS_NAME = "points.jsonl"
FORMAT = "histo-snapshot"
FORMAT_VERSION = 1
#: The embedded shard's files, in Qdrant's shard-snapshot layout.
SHARD = "edge-shard"
#: Every point as JSON lines; any backend restores it.
POINTS = "points"
KINDS = (SHARD, POINTS)

_BLOCK = 512
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_ENCODING = "utf-8"


class SnapshotError(InvalidInputError):
    """A snapshot file that cannot be restored: damaged, not a histo snapshot, or made for other
    encoders or another format version. Nothing has been replaced when it is raised."""


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def _data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the parts of a file that hold data, 512-byte aligned; the rest are holes.

    ``SEEK_DATA``/``SEEK_HOLE`` find them without reading; where the file system cannot tell, the
    whole file is one region.
    """
    regions: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            start -= start % _BLOCK
            end = min(size, -(-end // _BLOCK) * _BLOCK)
            if regions and start <= regions[-1][0] + regions[-1][1]:
                first = regions.pop()[0]
                regions.append((first, end - first))
            else:
                regions.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no data after pos (the rest is a hole)
            return [(0, size)] if size else []
    return regions


def _number(value: int) -> bytes:
    """A 12-byte numeric header field: 11 octal digits and NUL, or GNU base-256 when larger."""
    if value < 8**11:
        return b"%011o\0" % value
    return b"\x80" + value.to_bytes(11, "big")


def _sparse_header(info: tarfile.TarInfo, regions: list[tuple[int, int]], real_size: int) -> bytes:
    """The old-GNU sparse header (type ``S``) of a member that stores only ``regions``."""
    info.size = sum(length for _, length in regions)
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT, _ENCODING, "surrogateescape"))
    head = len(buf) - _BLOCK  # a long name comes first as its own GNU header
    buf[head + 156 : head + 157] = tarfile.GNUTYPE_SPARSE
    if not regions or sum(regions[-1]) < real_size:
        regions = [*regions, (real_size, 0)]  # a trailing hole: readers size the file by its last entry
    entries = [_number(offset) + _number(length) for offset, length in regions]
    first, rest = entries[:4], entries[4:]
    buf[head + 386 : head + 386 + 24 * len(first)] = b"".join(first)
    buf[head + 482] = 1 if rest else 0
    buf[head + 483 : head + 495] = _number(real_size)
    buf[head + 148 : head + 156] = b" " * 8
    checksum = sum(buf[head : head + _BLOCK])
    buf[head + 148 : head + 156] = b"%06o\0 " % checksum
    for start in range(0, len(rest), 21):
        block = bytearray(_BLOCK)
        part = rest[start : start + 21]
        block[: 24 * len(part)] = b"".join(part)
        block[504] = 1 if start + 21 < len(rest) else 0
        buf += block
    return bytes(buf)


class SnapshotWriter:
    """A snapshot being written to ``path``: tar members with their size and SHA-256 recorded,
    the manifest last; ``finish`` renames the ``.partial`` file into place."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.files: dict[str, dict[str, Any]] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
            self._out: IO[bytes] = open(self._partial, "wb")  # noqa: SIM115 - closed in finish/abort
        except OSError as exc:
            raise InvalidInputError(
                f"cannot write the snapshot {self.path}: {exc.strerror}; choose a writable folder"
            ) from None
        self._done = False
        self._dirs: set[str] = set()

    # -- members ---------------------------------------------------------------------------------

    def add_dir(self, name: str) -> None:
        if name in self._dirs:
            return
        self._dirs.add(name)
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        self._out.write(info.tobuf(tarfile.GNU_FORMAT, _ENCODING, "surrogateescape"))

    def add_file(self, source: Path, name: str) -> None:
        """Add a file as member ``name`` (its holes as a sparse member)."""
        with open(source, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            regions = _data_regions(file.fileno(), size)
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, int(time.time())
            if regions == [(0, size)] or size == 0:
                info.size = size
                self._out.write(info.tobuf(tarfile.GNU_FORMAT, _ENCODING, "surrogateescape"))
            else:
                self._out.write(_sparse_header(info, regions, size))
            digest = hashlib.sha256()
            stored, pos = 0, 0
            for offset, length in regions:
                _feed_zeros(digest, offset - pos)
                for chunk in _read_range(file, offset, length, name):
                    digest.update(chunk)
                    self._out.write(chunk)
                stored += length
                pos = offset + length
            _feed_zeros(digest, size - pos)
            self._out.write(bytes(-stored % _BLOCK))
        self.files[name] = {"size": size, "sha256": digest.hexdigest()}

    def add_tree(self, folder: Path, prefix: str) -> None:
        """Every folder and file under ``folder``, as ``prefix/<relative path>``."""
        self.add_dir(prefix)
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            rel = Path(root).relative_to(folder)
            base = prefix if rel == Path(".") else f"{prefix}/{rel.as_posix()}"
            self.add_dir(base)
            for name in sorted(files):
                self.add_file(Path(root) / name, f"{base}/{name}")

    def add_bytes(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        self._out.write(info.tobuf(tarfile.GNU_FORMAT, _ENCODING, "surrogateescape"))
        self._out.write(data)
        self._out.write(bytes(-len(data) % _BLOCK))

    # -- end -------------------------------------------------------------------------------------

    def finish(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Write the manifest (with every member's checksum), close, and rename into place."""
        final = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": self.files}
        self.add_bytes(MANIFEST_NAME, json.dumps(final, indent=1, sort_keys=True).encode())
        self._out.write(bytes(2 * _BLOCK))
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        os.replace(self._partial, self.path)
        self._done = True
        return final

    def abort(self) -> None:
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                self._out.close()
            with contextlib.suppress(OSError):
                self._partial.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()  # after finish: nothing to do


def _feed_zeros(digest: Any, count: int) -> None:
    while count > 0:
        step = min(count, _CHUNK)
        digest.update(_ZEROS[:step])
        count -= step


def _read_range(file: IO[bytes], offset: int, length: int, name: str) -> Iterator[bytes]:
    file.seek(offset)
    left = length
    while left > 0:
        chunk = file.read(min(left, _CHUNK))
        if not chunk:
            raise InvalidInputError(f"{name} shrank while it was archived; take the snapshot again")
        left -= len(chunk)
        yield chunk


def add_shard(writer: SnapshotWriter, shard_dir: Path) -> None:
    """The shard folder in Qdrant's shard-snapshot layout: each segment's files under
    ``segments/<id>/files/`` (the "streamable" segment format the engine restores), the rest as is."""
    for entry in sorted(shard_dir.iterdir()):
        if entry.name == "segments" and entry.is_dir():
            writer.add_dir("segments")
            for segment in sorted(entry.iterdir()):
                if segment.name.startswith("."):
                    continue
                writer.add_dir(f"segments/{segment.name}")
                writer.add_tree(segment, f"segments/{segment.name}/files")
        elif entry.is_dir():
            writer.add_tree(entry, entry.name)
        elif entry.is_file():
            writer.add_file(entry, entry.name)


def encode_record(record: Record) -> bytes:
    """One JSON line: id, payload, and each vector as base64 of its little-endian float32 bytes."""
    vectors = {
        name: base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
        for name, vec in sorted(record.vectors.items())
    }
    line = {"id": record.id, "payload": record.payload, "vectors": vectors}
    return json.dumps(line, sort_keys=True, allow_nan=False).encode() + b"\n"


def decode_record(line: bytes) -> Record:
    data = json.loads(line)
    vectors = {
        str(name): np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32).tolist()
        for name, text in data["vectors"].items()
    }
    return Record(str(data["id"]), dict(data["payload"]), vectors)


def add_points(writer: SnapshotWriter, records: Iterable[Record]) -> int:
    """Every record as the ``points.jsonl`` member (through a hidden file beside the snapshot)."""
    scratch = writer.path.with_name(f".{writer.path.name}.{uuid.uuid4().hex[:8]}.points")
    count = 0
    try:
        with open(scratch, "wb") as out:
            for record in records:
                out.write(encode_record(record))
                count += 1
        writer.add_file(scratch, POINTS_NAME)
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()
    return count


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def _damaged(path: Path, why: object) -> SnapshotError:
    return SnapshotError(
        f"{path} is not a readable histo snapshot ({why}); it may be truncated or damaged: "
        "use another copy or take a new snapshot (histocli index snapshot)"
    )


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    if not path.is_file():
        raise SnapshotError(f"no snapshot file at {path}; give the path of a .snapshot file")
    try:
        with tarfile.open(path, "r:") as tar:
            yield tar
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from None


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a snapshot, checked for format and kind (not yet against the data)."""
    path = Path(path)
    with _open_tar(path) as tar:
        try:
            member = tar.getmember(MANIFEST_NAME)
        except KeyError:
            raise SnapshotError(
                f"{path} has no {MANIFEST_NAME}: it is not a histo snapshot (or an incomplete one); "
                "snapshots are made by histocli index snapshot"
            ) from None
        handle = tar.extractfile(member)
        try:
            manifest = json.loads(handle.read() if handle else b"")
        except ValueError as exc:
            raise _damaged(path, f"its manifest is not JSON: {exc}") from None
    return check_manifest(path, manifest)


def check_manifest(path: Path, manifest: object) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{path}: {MANIFEST_NAME} is not a histo snapshot manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SnapshotError(
            f"{path} has snapshot format {version!r}, this histo reads up to {FORMAT_VERSION}; "
            "restore it with the histo version that made it (manifest: histo_version)"
        )
    if manifest.get("kind") not in KINDS:
        raise SnapshotError(f"{path} is of unknown kind {manifest.get('kind')!r}; expected one of {KINDS}")
    vectors = manifest.get("vectors")
    if not isinstance(vectors, dict) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 for dim in vectors.values()
    ):
        raise SnapshotError(f"{path}: the manifest's vectors are not a map of name -> dimension")
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("points"), int):
        raise SnapshotError(f"{path}: the manifest lacks its file list or point count")
    return manifest


def verify(path: Path) -> dict[str, Any]:
    """Read the whole snapshot and check every member against the manifest's size and SHA-256;
    for a shard, also that its ``edge_config.json`` has the manifest's vectors. Returns the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    expected: dict[str, dict[str, Any]] = manifest["files"]
    seen: set[str] = set()
    with _open_tar(path) as tar:
        for member in tar:
            if member.isdir() or member.name == MANIFEST_NAME:
                continue
            want = expected.get(member.name)
            if want is None or not member.isfile():
                raise _damaged(path, f"unexpected member {member.name!r}")
            got = _digest(tar, member)
            if got != (want.get("size"), want.get("sha256")):
                raise _damaged(path, f"{member.name} does not match its checksum")
            seen.add(member.name)
            if member.name == "edge_config.json":
                _check_shard_vectors(path, tar, member, manifest["vectors"])
    missing = sorted(set(expected) - seen)
    if missing:
        raise _damaged(path, f"{len(missing)} member(s) missing, e.g. {missing[0]}")
    if manifest["kind"] == POINTS and POINTS_NAME not in seen:
        raise _damaged(path, f"no {POINTS_NAME}")
    if manifest["kind"] == SHARD and "edge_config.json" not in seen:
        raise _damaged(path, "no edge_config.json")
    return manifest


def _digest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, str]:
    handle = tar.extractfile(member)
    digest, size = hashlib.sha256(), 0
    while handle is not None and (chunk := handle.read(_CHUNK)):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _check_shard_vectors(
    path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, vectors: Mapping[str, int]
) -> None:
    handle = tar.extractfile(member)
    try:
        config = json.loads(handle.read() if handle else b"")
        inside = {str(name): int(params["size"]) for name, params in (config.get("vectors") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _damaged(path, f"its edge_config.json cannot be read: {exc}") from None
    if inside != dict(vectors):
        raise SnapshotError(
            f"{path}: the manifest says vectors {dict(vectors)}, the index inside has {inside}; "
            "the snapshot was altered or is not the one its manifest describes"
        )


def unpack_shard(path: Path, target: Path) -> None:
    """Unpack an ``edge-shard`` snapshot into ``target`` with the engine's own snapshot reader."""
    import qdrant_edge as qe

    try:
        qe.EdgeShard.unpack_snapshot(str(path), str(target))
    except Exception as exc:  # the engine raises a bare Exception with its message
        raise _damaged(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    (target / MANIFEST_NAME).unlink(missing_ok=True)


def read_points(path: Path) -> Iterator[Record]:
    """The records of a ``points`` snapshot, in the order they were written."""
    with _open_tar(Path(path)) as tar:
        try:
            member = tar.getmember(POINTS_NAME)
        except KeyError:
            raise _damaged(Path(path), f"no {POINTS_NAME}") from None
        handle = tar.extractfile(member)
        if handle is None:
            raise _damaged(Path(path), f"{POINTS_NAME} is not a file")
        for line in handle:
            try:
                yield decode_record(line)
            except (ValueError, KeyError, TypeError) as exc:
                raise _damaged(Path(path), f"a point in {POINTS_NAME} cannot be read: {exc}") from None


@contextlib.contextmanager
def open_points(
    path: Path, manifest: Mapping[str, Any], workdir: Path | None = None
) -> Iterator[Iterator[Record]]:
    """The snapshot's records (id order for a shard). A shard is first unpacked into ``workdir``
    (default: a temporary folder) and opened, and its inventory checked, so that a damaged
    snapshot fails here, before the caller changes anything."""
    if manifest["kind"] == POINTS:
        yield read_points(path)
        return
    from histo.store.edge import EdgeStore

    with tempfile.TemporaryDirectory(prefix=".histo-unpack-", dir=workdir) as folder:
        unpack_shard(path, Path(folder) / "shard")
        try:
            store = EdgeStore(folder, "shard")
        except SnapshotError:
            raise
        except HistoError as exc:
            raise SnapshotError(f"{path} does not open as an index ({exc})") from None
        with store:
            check_inventory(path, manifest, store.inventory())
            yield store.scroll(with_vectors=True)


def load_points(store: Any, vectors: Mapping[str, int], records: Iterable[Record], batch: int = 256) -> int:
    """Create the named vectors and upsert every record (ids, payloads and vectors as they are)."""
    store.ensure_vectors(dict(vectors))
    count = 0
    pending: list[Point] = []
    for record in records:
        pending.append(Point(record.id, record.vectors, record.payload))
        if len(pending) >= batch:
            count += store.upsert(pending)
            pending = []
    count += store.upsert(pending) if pending else 0
    store.optimize()
    return count


#: The inventory entries a restored or copied collection must reproduce exactly.
COMPARED = ("points", "vectors", "vector_points", "datasets", "data_roots", "artifacts")


def check_inventory(path: Path, manifest: Mapping[str, Any], inventory: Mapping[str, Any]) -> None:
    """``SnapshotError`` naming the first figure where the index built from ``path`` differs."""
    for key in COMPARED:
        if key in manifest and manifest[key] != inventory.get(key):
            raise SnapshotError(
                f"{path}: the index inside has {key} {inventory.get(key)}, its manifest says "
                f"{manifest[key]}; the snapshot is damaged or not the one its manifest describes"
            )


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "POINTS",
    "POINTS_NAME",
    "SHARD",
    "SnapshotError",
    "SnapshotWriter",
    "add_points",
    "add_shard",
    "check_inventory",
    "decode_record",
    "encode_record",
    "load_points",
    "open_points",
    "read_manifest",
    "read_points",
    "unpack_shard",
    "verify",
]
