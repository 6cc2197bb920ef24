"""Keep a data set's points in step with its files: ``ingest --sync`` and ``index prune``.

The index is its own record of what was ingested: every point carries its file's ``path``,
``root`` and stamp (``histo.data.filestamp``). One scroll over a data set's payloads groups them
into :class:`IndexedFile` s, which are compared with the files on disk:

* **unchanged** (same size and mtime): nothing is read; **touched** (other size or mtime, same
  hash): restamped, vectors kept; **changed** (other hash): re-embedded; **new**: ingested;
  **unstamped** (points from before file stamps): stamped with the file as it is now, vectors
  kept — nothing records what they were cut from, and re-embedding a whole index on upgrade
  would cost hours for files that almost always did not change.
* **gone** (the file is under none of the roots its points name): its points are removed. A root
  folder that is missing altogether (an unmounted share?) removes nothing unless asked.

Order makes a crash harmless: a changed file's tiles are rewritten in place first (point ids
are deterministic per file and box), and only then are its points that this run did not rewrite
(boxes that vanished) deleted, so no file is ever left without points. Every removal is listed
(:func:`report_lines`) before it happens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histo.data.filestamp import FileStamp, stamp_records
from histo.data.records import ImageRecord
from histo.query_checks import require_dataset
from histo.store.base import Point, SearchFilter, VectorStore

STAMP_KEYS = ("file_size", "file_mtime_us", "file_hash")
#: Gone files named one by one in a report; all of them go to the removal log.
SHOWN = 20


@dataclass
class IndexedFile:
    """One source file as the index holds it: its points, their roots and their stamps."""

    rel_path: str
    roots: set[str] = field(default_factory=set)
    stamps: set[tuple[Any, ...]] = field(default_factory=set)
    ids: list[str] = field(default_factory=list)

    @property
    def stamp(self) -> FileStamp | None:
        """The stamp all its points agree on, or None (mixed, or from before file stamps)."""
        if len(self.stamps) != 1:
            return None
        size, mtime_us, digest = next(iter(self.stamps))
        if not isinstance(size, int) or not isinstance(mtime_us, int) or not isinstance(digest, str):
            return None
        return FileStamp(size, mtime_us, digest)

    @property
    def unstamped(self) -> bool:
        """Some of its points were ingested before file stamps were recorded."""
        return any(stamp[2] is None for stamp in self.stamps)

    @property
    def reachable(self) -> bool:
        """At least one of its roots is a folder here (else an unmounted share looks all gone)."""
        return any(Path(root).is_dir() for root in self.roots)

    @property
    def present(self) -> bool:
        return any(os.path.isfile(Path(root, self.rel_path)) for root in self.roots)


def indexed_files(store: VectorStore, dataset: str) -> dict[str, IndexedFile]:
    """Every file of ``dataset`` in the index, by ``path`` (one scroll over the payloads)."""
    files: dict[str, IndexedFile] = {}
    for record in store.scroll(SearchFilter(dataset=dataset), page=1024):
        rel_path = record.payload.get("path")
        if not isinstance(rel_path, str):
            continue
        entry = files.setdefault(rel_path, IndexedFile(rel_path))
        if isinstance(record.payload.get("root"), str):
            entry.roots.add(record.payload["root"])
        entry.stamps.add(tuple(record.payload.get(key) for key in STAMP_KEYS))
        entry.ids.append(record.id)
    return files


def known_stamps(files: dict[str, IndexedFile]) -> dict[str, FileStamp]:
    """The consistent stamps, by path: what the quick check compares the files on disk with."""
    return {path: stamp for path, entry in files.items() if (stamp := entry.stamp) is not None}


# ------------------------------------------------------------------------------------------------
# Sync: files on disk against the index
# ------------------------------------------------------------------------------------------------

STATES = ("unchanged", "touched", "changed", "new", "unstamped")


@dataclass
class SyncPlan:
    """What a sync of ``root`` will do: the stamped records to ingest, each file's state, the
    gone files whose points it removes, and the data set's files indexed from other folders."""

    dataset: str
    root: str
    records: list[ImageRecord]
    states: dict[str, str]
    indexed: dict[str, IndexedFile]
    gone: list[IndexedFile]
    elsewhere: int = 0

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s == state)

    @property
    def gone_points(self) -> int:
        return sum(len(f.ids) for f in self.gone)


def plan_sync(
    store: VectorStore, dataset: str, root: Path, records: Sequence[ImageRecord], progress: bool = False
) -> SyncPlan:
    """Stamp the records (quick check first) and sort every file into a state (module docstring)."""
    indexed = indexed_files(store, dataset)
    stamped = stamp_records(records, known_stamps(indexed), progress)
    states = {r.rel_path: _state(r, indexed.get(r.rel_path)) for r in stamped}
    here = str(root)
    rest = [f for path, f in indexed.items() if path not in states]
    gone = [f for f in rest if here in f.roots and not f.present]
    elsewhere = sum(1 for f in rest if here not in f.roots)
    return SyncPlan(dataset, here, stamped, states, indexed, sorted(gone, key=_path), elsewhere)


def _state(record: ImageRecord, entry: IndexedFile | None) -> str:
    if entry is None:
        return "new"
    if entry.unstamped:
        return "unstamped"
    if record.file_hash is None or any(stamp[2] != record.file_hash for stamp in entry.stamps):
        return "changed"
    disk, held = FileStamp.of(record), entry.stamp
    return "unchanged" if disk is not None and held is not None and disk.same_stat(held) else "touched"


def _path(entry: IndexedFile) -> str:
    return entry.rel_path


@dataclass
class SyncResult:
    """What settling a sync did: points of gone files removed, stale points of changed files
    removed, points of touched or unstamped files restamped that this run's tiling did not cover
    (ingestion restamps the rest), and changed files whose old points were kept as they failed."""

    gone_removed: int = 0
    stale_removed: int = 0
    restamped_leftovers: int = 0
    kept_failed: list[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.gone_removed + self.stale_removed


def settle(store: VectorStore, plan: SyncPlan, failed_paths: Iterable[str]) -> SyncResult:
    """After ingesting ``plan.records``: delete the points of changed files that this run did not
    rewrite (they still carry the old hash), restamp the other points of touched and unstamped
    files, and remove the points of gone files. Changed files that failed to read keep theirs."""
    failed = {str(p) for p in failed_paths}
    result = SyncResult()
    stale: list[str] = []
    restamps: list[Point] = []
    for record in plan.records:
        state = plan.states[record.rel_path]
        if state in ("new", "unchanged") or record.file_hash is None:
            continue
        if str(record.path) in failed:
            if state == "changed":
                result.kept_failed.append(record.rel_path)
            continue
        stamp = {key: getattr(record, key) for key in STAMP_KEYS}
        for point in store.retrieve(plan.indexed[record.rel_path].ids):
            if state == "changed" and point.payload.get("file_hash") != record.file_hash:
                stale.append(point.id)
            elif any(point.payload.get(key) != value for key, value in stamp.items()):
                restamps.append(Point(point.id, payload={**point.payload, **stamp}))
    result.restamped_leftovers = store.upsert(restamps)
    result.stale_removed = store.delete(stale)
    result.gone_removed = store.delete(i for f in plan.gone for i in f.ids)
    return result


# ------------------------------------------------------------------------------------------------
# Prune: files gone from disk, whatever folder they were ingested from
# ------------------------------------------------------------------------------------------------


@dataclass
class PrunePlan:
    """The gone files of a data set, and the files left alone because their root is missing."""

    dataset: str
    files: int
    gone: list[IndexedFile]
    unreachable: dict[str, int]

    @property
    def gone_points(self) -> int:
        return sum(len(f.ids) for f in self.gone)


def plan_prune(store: VectorStore, dataset: str, missing_roots: bool = False) -> PrunePlan:
    """The files of ``dataset`` that exist under none of their roots; with ``missing_roots``
    also those whose roots are missing altogether (else they are counted and kept)."""
    require_dataset(store, dataset)  # a typo must not read as "nothing gone"
    indexed = indexed_files(store, dataset)
    gone: list[IndexedFile] = []
    unreachable: dict[str, int] = {}
    for entry in indexed.values():
        if entry.present:
            continue
        if entry.reachable or missing_roots:
            gone.append(entry)
        else:
            for root in entry.roots:
                unreachable[root] = unreachable.get(root, 0) + 1
    return PrunePlan(dataset, len(indexed), sorted(gone, key=_path), dict(sorted(unreachable.items())))


def remove_files(store: VectorStore, files: Iterable[IndexedFile]) -> int:
    """Delete every point of these files; returns how many were removed."""
    return store.delete(i for f in files for i in f.ids)


def report_lines(gone: Sequence[IndexedFile], shown: int = SHOWN) -> list[str]:
    """One line per gone file (the first ``shown``), then how many more."""
    lines = [f"  gone: {f.rel_path} ({len(f.ids)} points)" for f in gone[:shown]]
    if len(gone) > shown:
        lines.append(f"  … and {len(gone) - shown} more gone files")
    return lines


def write_removals(path: Path, gone: Sequence[IndexedFile]) -> None:
    """The full list of removed files: ``root/path<TAB>points``, one line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{','.join(sorted(f.roots)) or '-'}/{f.rel_path}\t{len(f.ids)}\n" for f in gone))
