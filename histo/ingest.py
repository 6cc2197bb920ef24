"""The in-process ingestion pipeline: decode and tile in worker processes, embed in batches, upsert.

A ``DataLoader`` decodes and tiles whole images in its worker processes while the main process
embeds full batches with every encoder and upserts one point per tile with all its vectors at
once — so a crash or a corrupt file never leaves a partial point. Before embedding, the store is
asked which tiles still lack which vectors: a rerun skips finished tiles, and a new encoder only
fills in its own vector.
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
from histo.data.records import ImageRecord, Tile
from histo.data.tiling import TilingConfig, iter_tiles
from histo.embedding import Embedder
from histo.errors import ImageDecodeError
from histo.store.base import Point, VectorStore


@dataclass
class ImageTiles:
    """What a loader worker hands back for one image: its tiles, or why it has none."""

    record: ImageRecord
    tiles: list[Tile]
    error: str | None = None


@dataclass
class IngestSummary:
    """Counts of one run, with one problem per failed file."""

    dataset: str
    images: int = 0
    tiles: int = 0
    embedded: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failed: list[Problem] = field(default_factory=list)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "images": self.images,
            "tiles": self.tiles,
            "embedded": self.embedded,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "seconds": round(self.seconds, 2),
            "tiles_per_second": round(self.tiles_per_second, 1),
            "failures": [{"path": p.path, "reason": p.reason} for p in self.failed],
        }


class TilingDataset(Dataset):
    """One item per image: decoded and tiled inside the DataLoader worker."""

    def __init__(self, records: list[ImageRecord], config: TilingConfig, max_pixels: int) -> None:
        self.records, self.config, self.max_pixels = records, config, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageTiles:
        record = self.records[index]
        try:
            return ImageTiles(record, list(iter_tiles(record, self.config, self.max_pixels)))
        except ImageDecodeError as exc:
            return ImageTiles(record, [], str(exc).removeprefix(f"{record.path}: "))


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

    def write(self, tiles: list[Tile]) -> tuple[int, int]:
        """Embed what is missing and upsert; returns (embedded, skipped)."""
        if not tiles:
            return 0, 0
        missing = self.store.missing_vectors([t.id for t in tiles], list(self.embedders))
        todo = [t for t in tiles if t.id in missing]
        vectors: dict[str, dict[str, np.ndarray]] = {t.id: {} for t in todo}
        for name, embedder in self.embedders.items():
            need = [t for t in todo if name in missing[t.id]]
            if need:
                for tile, vector in zip(
                    need, embedder.embed(np.stack([t.pixels for t in need])), strict=True
                ):
                    vectors[tile.id][name] = vector
        self.store.upsert(Point(t.id, vectors[t.id], t.payload) for t in todo)
        return len(todo), len(tiles) - len(todo)


def ingest(
    records: list[ImageRecord],
    ingestor: Ingestor,
    config: TilingConfig,
    max_pixels: int,
    num_workers: int | None = None,
    progress: bool = True,
    failures_file: Path | None = None,
) -> IngestSummary:
    """Tile, embed and upsert every record; failures are recorded, never fatal."""
    dataset = records[0].dataset if records else "-"
    summary = IngestSummary(dataset)
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(
        TilingDataset(records, config, max_pixels),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(_die_with_parent, parent=os.getpid()) if workers else None,
        multiprocessing_context=LOADER_CONTEXT if workers else None,
    )
    started = time.perf_counter()
    pending: list[Tile] = []
    with tqdm(total=len(records), desc=f"ingesting {dataset}", unit="img", disable=not progress) as bar:
        for item in loader:
            summary.images += 1
            if item.error is not None:
                summary.failed.append(Problem(str(item.record.path), item.error))
            pending.extend(item.tiles)
            summary.tiles += len(item.tiles)
            while len(pending) >= ingestor.batch_size:
                _flush(ingestor, pending[: ingestor.batch_size], summary)
                del pending[: ingestor.batch_size]
            bar.update(1)
            bar.set_postfix(
                tiles=summary.tiles, tiles_s=f"{summary.tiles / (time.perf_counter() - started):.1f}"
            )
        _flush(ingestor, pending, summary)
    ingestor.store.optimize()
    summary.seconds = time.perf_counter() - started
    if failures_file is not None:
        write_failures(failures_file, summary.failed)
    return summary


def _as_is(item: Any) -> Any:
    """Items are whole images already; no batching, no tensor conversion."""
    return item


def _flush(ingestor: Ingestor, tiles: list[Tile], summary: IngestSummary) -> None:
    embedded, skipped = ingestor.write(tiles)
    summary.embedded += embedded
    summary.skipped += skipped


def write_failures(path: Path, failures: list[Problem]) -> None:
    """One line per failed file: ``path<TAB>reason``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p.path}\t{p.reason}\n" for p in failures))
