"""Backups of the index: ``histocli index snapshot`` and ``histocli index restore``.

A snapshot is one file (format: ``histo.store.archive``) whose manifest records histo's version,
the encoders under ``HISTO_HOME/encoders`` with each artifact's digest (``artifact_digest``), and
the collection's inventory: points, per encoder, per data set and per (data set, encoder), the
folders the data sets were ingested from, and per encoder how many vectors each artifact made
(the points carry that record; ``histo.provenance``). Taking one is the store's job
(``VectorStore.snapshot``):
the embedded index is flushed and archived under its mutex by the process that owns it, which,
while ``histocli serve`` runs, is the service, asked over gRPC (``CreateSnapshot``).

Restoring checks everything before it replaces anything: every archive member against its
checksum, the format, and that each encoder here that shares a name with the snapshot's vectors
makes vectors of the same size; then the store builds the index beside the current one, opens it,
compares it with the manifest and swaps it in (``VectorStore.restore``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from histo import __version__
from histo.encoders.artifact import artifact_digest, list_artifacts
from histo.store.archive import SnapshotError, verify
from histo.store.base import VectorStore

SUFFIX = ".snapshot"


@dataclass(frozen=True)
class Snapshot:
    """A snapshot written: where, its manifest, and how long it took."""

    path: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class Restored:
    """A snapshot restored: its manifest, what to look at (encoders that differ), and the time."""

    manifest: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def encoders_of(encoders_dir: Path) -> dict[str, dict[str, Any]]:
    """The encoder artifacts under ``encoders_dir`` by name (the vector name), with their digest."""
    return {
        folder.name: {
            "digest": artifact_digest(folder),
            "dim": meta.embedding_dim,
            "kind": meta.kind,
            "method": meta.method,
            "created": meta.created,
        }
        for folder, meta in list_artifacts(Path(encoders_dir))
    }


def snapshot_path(out: Path | None, default_dir: Path, collection: str) -> Path:
    """The file to write: ``out`` itself, or a time-stamped name inside ``out`` (a folder) or,
    without ``out``, inside ``default_dir`` (``HISTO_HOME/snapshots``)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{collection}-{stamp}{SUFFIX}"
    if out is None:
        return Path(default_dir) / name
    out = Path(out).expanduser()
    if out.is_dir() or str(out).endswith("/"):
        return out / name
    if out.exists():
        raise SnapshotError(
            f"{out} exists; give a new file name or a folder (snapshots are never overwritten)"
        )
    return out


def create_snapshot(store: VectorStore, out: Path, encoders_dir: Path) -> Snapshot:
    """Write a snapshot of ``store`` to the file ``out``."""
    manifest = {
        "histo_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": store.description,
        "encoders": encoders_of(encoders_dir),
    }
    started = time.perf_counter()
    written = store.snapshot(Path(out), manifest)
    return Snapshot(Path(out), written, time.perf_counter() - started)


def check_snapshot(path: Path, encoders_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """The verified manifest of ``path`` and warnings about encoders that differ here;
    ``SnapshotError`` if it is damaged or its vectors cannot fit the encoders here."""
    manifest = verify(Path(path))
    return manifest, _compare_encoders(Path(path), manifest, Path(encoders_dir))


def _compare_encoders(path: Path, manifest: dict[str, Any], encoders_dir: Path) -> list[str]:
    here = {folder.name: (folder, meta) for folder, meta in list_artifacts(encoders_dir)}
    recorded: dict[str, Any] = manifest.get("encoders") or {}
    warnings = []
    missing = sorted(set(manifest["vectors"]) - set(here))
    if missing:
        warnings.append(
            f"encoder(s) {', '.join(missing)} not under {encoders_dir}: their vectors are restored, but "
            "image queries need those artifacts back (their digests are in the manifest)"
        )
    for name, dim in sorted(manifest["vectors"].items()):
        if name not in here:
            continue
        folder, meta = here[name]
        if meta.embedding_dim != dim:
            raise SnapshotError(
                f"{path} holds {dim}-d {name!r} vectors, but the encoder {name!r} here ({folder}) makes "
                f"{meta.embedding_dim}-d ones; restore into a HISTO_HOME with the encoders the snapshot "
                "was made with (manifest: encoders), or re-ingest"
            )
        here_digest = artifact_digest(folder)
        made_by = (manifest.get("artifacts") or {}).get(name) or {}
        other = sum(count for digest, count in made_by.items() if digest != here_digest)
        if other:
            warnings.append(
                f"{other} of the snapshot's {name!r} vectors were made by another artifact than the "
                f"{name} here ({folder}, digest {here_digest}): searches with {name} are refused until you "
                "put that artifact back (its digest is in the manifest) or re-ingest them"
            )
        elif not made_by and (recorded.get(name) or {}).get("digest") not in (None, here_digest):
            warnings.append(
                f"encoder {name!r} here is not the artifact the snapshot was taken beside (digest "
                f"{(recorded.get(name) or {}).get('digest')}): its vectors may be another model's; "
                "put that artifact back or re-ingest"
            )
    return warnings


def restore_snapshot(store: VectorStore, path: Path, encoders_dir: Path) -> Restored:
    """Verify ``path`` in full, then replace ``store``'s collection with it."""
    started = time.perf_counter()
    manifest, warnings = check_snapshot(path, encoders_dir)
    store.restore(Path(path), manifest)
    return Restored(manifest, time.perf_counter() - started, warnings)


@dataclass(frozen=True)
class SnapshotTaker:
    """What a service that owns the index needs to take snapshots for its clients (the
    ``CreateSnapshot`` RPC): its store, the encoders folder, and a scratch folder beside the index
    (``HISTO_HOME/snapshots``, not /tmp, which may be small) where a snapshot lives while it is sent."""

    store: VectorStore
    encoders_dir: Path
    workdir: Path

    def stream(self, chunk_bytes: int = 1 << 20) -> Iterator[tuple[Snapshot, bytes]]:
        """Take a snapshot in a scratch folder of its own and yield it in chunks (the snapshot with
        each); the file is deleted once sent, or when the receiver goes away."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".sending-", dir=self.workdir) as folder:
            path = snapshot_path(None, Path(folder), self.store.collection)
            snapshot = create_snapshot(self.store, path, self.encoders_dir)
            with open(path, "rb") as file:
                while data := file.read(chunk_bytes):
                    yield snapshot, data


__all__ = [
    "SUFFIX",
    "Restored",
    "Snapshot",
    "SnapshotError",
    "SnapshotTaker",
    "check_snapshot",
    "create_snapshot",
    "encoders_of",
    "restore_snapshot",
    "snapshot_path",
]
