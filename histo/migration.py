"""Moving the index between the embedded shard and a Qdrant server (``histocli index migrate``).

Points are copied in id order, a page at a time, with every named vector, payload and id as they
are. After each page is written (a server is asked to wait until it is applied), a checkpoint file
records where the next page starts, so a copy that was interrupted (killed, lost its server)
resumes there when started again with the same source and destination; writing a page twice is
harmless (an upsert by id). At the end the destination's inventory (points, per encoder, per data
set and per (data set, encoder), the data sets' folders) must equal the source's, and a sample of
points is compared: payloads, and vectors bit for bit.

Bit for bit holds between Qdrant engines (the embedded shard, a Qdrant server): both keep a vector
that is already of unit length as it is. qdrant-client's local mode (the test stand-in for a
server) divides every cosine vector by its norm again, which moves the last bit of about a third
of them; the check counts those apart ("renormalised") and accepts them, nothing more.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from histo.errors import HistoError, InvalidInputError
from histo.store.archive import COMPARED
from histo.store.base import Point, Record, VectorStore

DEFAULT_BATCH = 256
DEFAULT_SAMPLE = 256
#: Largest difference a re-normalised unit vector shows (a few float32 ulps at 1.0).
RENORMALISED_TOLERANCE = 1e-6


class MigrationError(HistoError):
    """The copy finished but does not match its source; the message lists the differences."""


@dataclass
class Checkpoint:
    """Where an unfinished copy stands: the id its next page starts at (None: from the first or,
    with ``finished``, nothing left) and how many points are written."""

    source: str
    destination: str
    next_offset: str | None = None
    copied: int = 0
    finished: bool = False
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidInputError(
                f"the migration checkpoint {path} cannot be read ({exc}); delete it to start the copy over"
            ) from None

    def save(self, path: Path) -> None:
        """Write atomically (a kill leaves the old checkpoint or the new one, never half of one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        with open(temp, "w", encoding="utf-8") as file:
            json.dump(asdict(self), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)


def where(store: VectorStore) -> str:
    """A store and collection, as a checkpoint names them."""
    return f"{store.description}#{store.collection}"


def checkpoint_path(folder: Path, source: VectorStore, destination: VectorStore) -> Path:
    """One checkpoint file per (source, destination) pair, under ``folder`` (HISTO_HOME/migrations)."""
    key = hashlib.sha256(f"{where(source)}\n{where(destination)}".encode()).hexdigest()[:16]
    return Path(folder) / f"{key}.json"


@dataclass(frozen=True)
class Verification:
    """The destination compared with the source after the copy."""

    points: int
    sampled: int
    identical: int
    renormalised: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Migration:
    """A finished copy: points written by this run and by the interrupted ones before it."""

    copied: int
    resumed_from: int
    seconds: float
    verification: Verification


def migrate(
    source: VectorStore,
    destination: VectorStore,
    checkpoint: Path,
    *,
    batch: int = DEFAULT_BATCH,
    sample: int = DEFAULT_SAMPLE,
    on_page: Callable[[int], None] | None = None,
) -> Migration:
    """Copy every point of ``source`` into ``destination`` (resuming from ``checkpoint`` when it
    records an unfinished copy between the two), then verify. ``MigrationError`` if the copy does
    not match; the checkpoint is then reset, so that running again copies everything anew."""
    if batch < 1:
        raise InvalidInputError(f"the page size must be at least 1, got {batch}")
    started = time.perf_counter()
    expected = source.inventory()
    if not expected["points"]:
        raise InvalidInputError(f"nothing to migrate: the index {where(source)} holds no points")
    state = _start(source, destination, checkpoint)
    resumed_from = state.copied
    destination.ensure_vectors(expected["vectors"])
    while not state.finished:
        records, following = source.scroll_page(state.next_offset, batch, with_vectors=True)
        if records:
            destination.upsert(Point(r.id, r.vectors, r.payload) for r in records)
        state.copied += len(records)
        state.next_offset, state.finished = following, following is None
        state.save(checkpoint)
        if on_page is not None:
            on_page(len(records))
    destination.optimize()
    verification = verify(source, destination, sample, expected)
    if not verification.ok:
        Checkpoint(state.source, state.destination).save(checkpoint)
        raise MigrationError(
            f"the copy in {where(destination)} does not match {where(source)}: "
            + "; ".join(verification.problems[:5])
            + " (did something write to the source meanwhile?); run the migration again to copy anew"
        )
    checkpoint.unlink(missing_ok=True)
    return Migration(state.copied - resumed_from, resumed_from, time.perf_counter() - started, verification)


def _start(source: VectorStore, destination: VectorStore, checkpoint: Path) -> Checkpoint:
    """The recorded unfinished copy, or a new one into an empty destination."""
    state = Checkpoint.load(checkpoint)
    if state is not None and (state.source, state.destination) == (where(source), where(destination)):
        return state
    held = destination.count()
    if held:
        raise InvalidInputError(
            f"{where(destination)} already holds {held} points and no unfinished migration into it is "
            "recorded; migrate into an empty collection (--collection NAME, or drop it first)"
        )
    state = Checkpoint(where(source), where(destination))
    state.save(checkpoint)
    return state


def verify(
    source: VectorStore, destination: VectorStore, sample: int, expected: dict[str, Any] | None = None
) -> Verification:
    """Inventories equal, and ``sample`` points (a seeded random choice) equal in payload and in
    every vector bit for bit (or within ``RENORMALISED_TOLERANCE``, counted apart)."""
    expected = expected or source.inventory()
    found = destination.inventory()
    problems = [
        f"{key}: {expected[key]} in the source, {found.get(key)} in the copy"
        for key in COMPARED
        if expected.get(key) != found.get(key)
    ]
    ids = _sample_ids(source, sample)
    theirs = {r.id: r for r in destination.retrieve(ids, with_vectors=True)}
    identical = renormalised = 0
    for mine in source.retrieve(ids, with_vectors=True):
        verdict = _compare(mine, theirs.get(mine.id))
        if verdict == "identical":
            identical += 1
        elif verdict == "renormalised":
            renormalised += 1
        else:
            problems.append(f"point {mine.id}: {verdict}")
    return Verification(int(expected["points"]), len(ids), identical, renormalised, problems)


def _sample_ids(store: VectorStore, size: int) -> list[str]:
    """A uniform sample of point ids in one pass (reservoir sampling, seeded: reruns agree)."""
    rng = random.Random(0)
    chosen: list[str] = []
    for seen, record in enumerate(store.scroll()):
        if seen < size:
            chosen.append(record.id)
        elif (slot := rng.randint(0, seen)) < size:
            chosen[slot] = record.id
    return chosen


def _compare(mine: Record, theirs: Record | None) -> str:
    if theirs is None:
        return "missing in the copy"
    if mine.payload != theirs.payload:
        return "payload differs"
    if set(mine.vectors) != set(theirs.vectors):
        return f"vectors {sorted(theirs.vectors)} instead of {sorted(mine.vectors)}"
    verdict = "identical"
    for name, vector in mine.vectors.items():
        a = np.asarray(vector, dtype=np.float32)
        b = np.asarray(theirs.vectors[name], dtype=np.float32)
        if a.tobytes() == b.tobytes():
            continue
        if a.shape != b.shape or float(np.max(np.abs(a - b))) > RENORMALISED_TOLERANCE:
            return f"vector {name!r} differs"
        verdict = "renormalised"
    return verdict


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_SAMPLE",
    "Checkpoint",
    "Migration",
    "MigrationError",
    "Verification",
    "checkpoint_path",
    "migrate",
    "verify",
    "where",
]
