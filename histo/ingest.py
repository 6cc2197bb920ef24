"""The in-process ingestion pipeline: decode and tile in worker processes, embed in batches, upsert.

A ``DataLoader`` decodes and tiles whole images (a whole-slide image: its tissue tiles in parts of
``SLIDE_PART``, found on its thumbnail first) in its worker processes while the main process
embeds full batches with every encoder and upserts one point per tile with all its vectors at
once — so a crash or a corrupt file never leaves a partial point. Before embedding, the store is
asked which tiles still lack which vectors: a rerun skips finished tiles, and a new encoder only
fills in its own vector. Every tile records its file's size, mtime and hash (``histo.data.filestamp``);
a stored tile cut from other bytes of its file is embedded anew (``histo.sync`` removes the rest).
"""

from __future__ import annotations

import functools
import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from histo.data.datasets.base import Problem
from histo.data.filestamp import stamp_records
from histo.data.records import Box, ImageRecord, Tile
from histo.data.slides import is_slide, plan_slide, slide_tiles
from histo.data.tiling import TilingConfig, iter_tiles
from histo.embedding import Embedder
from histo.errors import HistoError, ImageDecodeError, InvalidInputError
from histo.slide_search import build_mosaics
from histo.store.base import STAMP_KEY, Point, VectorStore

#: Tiles of a slide per unit of loader work, so that a 100,000-tile slide never sits in memory.
SLIDE_PART = 256


@dataclass(frozen=True)
class WorkUnit:
    """One loader item: a whole photo (``boxes`` None) or a part of a planned slide."""

    record: ImageRecord
    boxes: tuple[Box, ...] | None = None
    last: bool = True  # the record's last unit: the progress bar counts images


@dataclass
class ImageTiles:
    """What a loader worker hands back for one unit: its tiles, or why it has none."""

    record: ImageRecord
    tiles: list[Tile]
    error: str | None = None
    last: bool = True


def reason_of(record: ImageRecord, exc: Exception) -> str:
    """An error's message without the path that the failure list prints beside it."""
    return str(exc).removeprefix(f"{record.path}: ")


def plan_units(records: list[ImageRecord], config: TilingConfig) -> tuple[list[WorkUnit], list[Problem]]:
    """One unit per photo; per slide, its tissue boxes (from the thumbnail) in parts of SLIDE_PART.
    A slide that cannot be planned (unreadable, no µm/px, no tissue) is one problem."""
    units: list[WorkUnit] = []
    problems: list[Problem] = []
    for record in records:
        if not is_slide(record.path):
            units.append(WorkUnit(record))
            continue
        try:
            planned, boxes = plan_slide(record, config)
        except HistoError as exc:
            problems.append(Problem(str(record.path), reason_of(record, exc)))
            continue
        parts = [tuple(boxes[i : i + SLIDE_PART]) for i in range(0, len(boxes), SLIDE_PART)]
        units.extend(WorkUnit(planned, part, n == len(parts) - 1) for n, part in enumerate(parts))
    return units, problems


@dataclass
class IngestSummary:
    """Counts of one run, with one problem per failed file."""

    dataset: str
    images: int = 0
    tiles: int = 0
    embedded: int = 0
    skipped: int = 0
    #: Of ``embedded``: tiles whose vector of an encoder another artifact had made.
    reembedded: int = 0
    seconds: float = 0.0
    failed: list[Problem] = field(default_factory=list)
    #: Mosaic tiles chosen per whole-slide image (``histo.slide_search``).
    mosaics: dict[str, int] = field(default_factory=dict)

    @property
    def tiles_per_second(self) -> float:
        """Tiles through the whole run (cut, embedded or found indexed, written)."""
        return self.tiles / self.seconds if self.seconds > 0 else 0.0

    @property
    def embedded_per_second(self) -> float:
        """Tiles embedded per second of the run (what the model manages)."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "images": self.images,
            "tiles": self.tiles,
            "embedded": self.embedded,
            "reembedded": self.reembedded,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "seconds": round(self.seconds, 2),
            "tiles_per_second": round(self.tiles_per_second, 1),
            "embedded_per_second": round(self.embedded_per_second, 1),
            "slides": len(self.mosaics),
            "mosaic_tiles": sum(self.mosaics.values()),
            "failures": [{"path": p.path, "reason": p.reason} for p in self.failed],
        }


class TilingDataset(Dataset):
    """One item per work unit: decoded and tiled inside the DataLoader worker."""

    def __init__(self, units: list[WorkUnit], config: TilingConfig, max_pixels: int) -> None:
        self.units, self.config, self.max_pixels = units, config, max_pixels

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> ImageTiles:
        unit = self.units[index]
        record = unit.record
        try:
            if unit.boxes is None:
                return ImageTiles(
                    record, list(iter_tiles(record, self.config, self.max_pixels)), last=unit.last
                )
            unreadable: list[str] = []
            tiles = list(slide_tiles(record, unit.boxes, self.config, unreadable))
            return ImageTiles(record, tiles, _unreadable(unreadable), last=unit.last)
        except ImageDecodeError as exc:
            return ImageTiles(record, [], reason_of(record, exc), last=unit.last)


def _unreadable(reasons: list[str]) -> str | None:
    """One line for a slide part's unreadable tiles (the readable ones are still indexed)."""
    if not reasons:
        return None
    more = f" (and {len(reasons) - 1} more tiles)" if len(reasons) > 1 else ""
    return f"{reasons[0]}{more}; the slide's other tiles were indexed"


def _die_with_parent(worker_id: int, parent: int) -> None:
    """A loader worker ends when the ingesting process dies, even by SIGKILL.

    torch's own check polls the worker's parent, which is the forkserver (see ``LOADER_CONTEXT``),
    not the ingesting process, so an orphan would wait forever. A thread watches a pidfd of the
    ingesting process instead (Linux >= 5.3) and ends the worker the moment it is gone.
    """
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:  # gone before we started
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here: torch's own check is all there is
        return
    threading.Thread(
        target=_exit_when_readable, args=(pidfd,), name="histo-parent-watch", daemon=True
    ).start()


def _exit_when_readable(fd: int) -> None:
    select.select([fd], [], [])  # a pidfd turns readable when its process ends
    os._exit(1)


#: Loader workers start from a clean forkserver, never as forks of the ingesting process: that
#: process runs the embedded engine's threads and may hold Redis/Celery connection pools, and a
#: fork copies them mid-use (in the test suite a forked worker hung in kombu's after-fork cleanup,
#: reading a socket its parent owned). The forkserver starts once per process.
LOADER_CONTEXT = "forkserver"


def default_workers() -> int:
    """Loader processes: leave a core to the model; none on two cores or fewer, where a loader
    process only takes cycles from the model (``python -m benchmarks run --only pipeline`` on 2
    cores: 0.83 of raw forward with one loader worker, 0.95 decoding in the main process)."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus - 1)


class Ingestor:
    """Embeds tiles with every encoder and writes them to the store, batch by batch."""

    def __init__(self, store: VectorStore, embedders: dict[str, Embedder], batch_size: int = 64) -> None:
        self.store, self.embedders, self.batch_size = store, embedders, batch_size
        store.ensure_vectors({name: embedder.dim for name, embedder in embedders.items()})

    @property
    def mosaic_encoder(self) -> str:
        """The encoder whose vectors choose slide mosaics: the one searches default to."""
        from histo.encoder_choice import default_encoder

        name = default_encoder({n: e.meta for n, e in self.embedders.items()})
        if name is None:
            raise InvalidInputError("ingestion needs at least one encoder")
        return name

    def write(self, tiles: list[Tile]) -> Written:
        """Embed what is missing and upsert.

        Missing: a vector the point lacks, or one another artifact made (its ``artifacts`` stamp
        differs from the embedder's digest, or it has none: ``histo.provenance``). A tile whose
        stored point was cut from other file content (another ``file_hash``) gets every vector
        anew; one whose payload merely differs (a touched file, a point from before file stamps,
        a moved data set) gets its payload only. The mosaic marks stay: they belong to
        ``histo.slide_search``."""
        if not tiles:
            return Written()
        ids = [t.id for t in tiles]
        stored = {r.id: r.payload for r in self.store.retrieve(ids)}
        missing = self.store.missing_vectors(ids, list(self.embedders))
        reembedded = 0
        for tile in tiles:
            old = stored.get(tile.id)
            if old is None:
                continue
            if _content_changed(old, tile.payload):
                missing[tile.id] = set(self.embedders)
                continue
            made = _stamps(old)
            other = {n for n, e in self.embedders.items() if made.get(n) != e.digest}
            if other - missing.get(tile.id, set()):
                reembedded += 1
            if other:
                missing.setdefault(tile.id, set()).update(other)
        todo = [t for t in tiles if t.id in missing]
        vectors: dict[str, dict[str, np.ndarray]] = {t.id: {} for t in todo}
        for name, embedder in self.embedders.items():
            need = [t for t in todo if name in missing[t.id]]
            if need:
                for tile, vector in zip(
                    need, embedder.embed(np.stack([t.pixels for t in need])), strict=True
                ):
                    vectors[tile.id][name] = vector
        digests = {name: embedder.digest for name, embedder in self.embedders.items()}
        payloads = {
            t.id: _stamped(_kept_marks(old, t.payload), old, vectors.get(t.id), digests)
            for t in tiles
            for old in [stored.get(t.id)]
        }
        restamp = [t for t in tiles if t.id not in missing and payloads[t.id] != stored[t.id]]
        self.store.upsert(
            [Point(t.id, vectors[t.id], payloads[t.id]) for t in todo]
            + [Point(t.id, payload=payloads[t.id]) for t in restamp]
        )
        return Written(len(todo), len(tiles) - len(todo), reembedded)


@dataclass(frozen=True)
class Written:
    """What one ``Ingestor.write`` did: tiles embedded (``reembedded`` of them because another
    artifact had made a vector they had) and tiles already indexed as they are."""

    embedded: int = 0
    skipped: int = 0
    reembedded: int = 0


#: Payload keys that slide search owns (a slide's mosaic), kept when ingestion rewrites a payload.
MOSAIC_MARKS = ("role", "mosaic_encoder")


def _content_changed(stored: dict[str, Any], fresh: dict[str, Any]) -> bool:
    """Whether a stored point was cut from other bytes than the tile now (both stamped)."""
    old, new = stored.get("file_hash"), fresh.get("file_hash")
    return old is not None and new is not None and old != new


def _kept_marks(stored: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    marks = {k: stored[k] for k in MOSAIC_MARKS if stored is not None and k in stored}
    return {**fresh, **marks}


def _stamps(payload: dict[str, Any] | None) -> dict[str, str]:
    """A stored payload's record of which artifact made each of its vectors."""
    made = (payload or {}).get(STAMP_KEY)
    return {str(k): str(v) for k, v in made.items()} if isinstance(made, dict) else {}


def _stamped(
    payload: dict[str, Any],
    stored: dict[str, Any] | None,
    embedded: dict[str, np.ndarray] | None,
    digests: dict[str, str],
) -> dict[str, Any]:
    """``payload`` with the artifact record: the stored one, and this run's digest for every
    vector embedded now."""
    made = _stamps(stored) | {name: digests[name] for name in embedded or {}}
    return {**payload, STAMP_KEY: dict(sorted(made.items()))} if made else payload


def ingest(
    records: list[ImageRecord],
    ingestor: Ingestor,
    config: TilingConfig,
    max_pixels: int,
    num_workers: int | None = None,
    progress: bool = True,
    failures_file: Path | None = None,
) -> IngestSummary:
    """Tile, embed and upsert every record; failures are recorded, never fatal. Each record is
    stamped first (``histo.data.filestamp``; one already stamped as its file is keeps its hash), so
    every tile records the file it was cut from."""
    dataset = records[0].dataset if records else "-"
    records = stamp_records(records, progress=progress)
    summary = IngestSummary(dataset)
    units, unplanned = plan_units(records, config)
    summary.failed.extend(unplanned)
    summary.images += len(unplanned)
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(
        TilingDataset(units, config, max_pixels),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(_die_with_parent, parent=os.getpid()) if workers else None,
        multiprocessing_context=LOADER_CONTEXT if workers else None,
    )
    started = time.perf_counter()
    pending: list[Tile] = []
    with tqdm(
        total=len(records),
        initial=len(unplanned),
        desc=f"ingesting {dataset}",
        unit="img",
        disable=not progress,
    ) as bar:
        for item in loader:
            failed_before = summary.failed and summary.failed[-1].path == str(item.record.path)
            if item.error is not None and not failed_before:  # a slide's part fails once
                summary.failed.append(Problem(str(item.record.path), item.error))
            pending.extend(item.tiles)
            summary.tiles += len(item.tiles)
            while len(pending) >= ingestor.batch_size:
                _flush(ingestor, pending[: ingestor.batch_size], summary)
                del pending[: ingestor.batch_size]
            if item.last:
                summary.images += 1
                bar.update(1)
            bar.set_postfix_str(_rates(summary, time.perf_counter() - started), refresh=False)
        _flush(ingestor, pending, summary)
        bar.set_postfix_str(_rates(summary, time.perf_counter() - started))  # the last batch counts
    slides = sorted({u.record.slide_id for u in units if u.boxes is not None and u.record.slide_id})
    if slides:
        summary.mosaics = build_mosaics(ingestor.store, ingestor.mosaic_encoder, dataset, slides)
    ingestor.store.optimize()
    summary.seconds = time.perf_counter() - started
    if failures_file is not None:
        write_failures(failures_file, summary.failed)
    return summary


def _rates(summary: IngestSummary, seconds: float) -> str:
    """The bar's figures: tiles embedded (the slow part) and their rate, not tiles cut, which the
    loader yields far faster than the model embeds them (1,351 cut/s, then 9 embedded/s)."""
    rate = summary.embedded / seconds if seconds > 0 else 0.0
    return (
        f"{summary.embedded} embedded, {rate:.1f} tiles/s, {summary.skipped} already indexed, "
        f"{summary.tiles} cut"
    )


def _as_is(item: Any) -> Any:
    """Items are whole images already; no batching, no tensor conversion."""
    return item


def _flush(ingestor: Ingestor, tiles: list[Tile], summary: IngestSummary) -> None:
    written = ingestor.write(tiles)
    summary.embedded += written.embedded
    summary.skipped += written.skipped
    summary.reembedded += written.reembedded


def write_failures(path: Path, failures: list[Problem]) -> None:
    """One line per failed file: ``path<TAB>reason``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p.path}\t{p.reason}\n" for p in failures))
