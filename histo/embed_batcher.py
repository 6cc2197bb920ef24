"""Dynamic batching for query embedding: concurrent callers' tiles in one forward pass.

A search server embeds uploaded images on its RPC threads. Left there, each upload runs its own
forward pass at the same time as the others (oversubscribing the cores) and keeps id and vector
queries waiting for CPU. ``EmbedBatcher`` moves embedding to **one worker thread per encoder**:
a caller queues its tiles and waits on a future; the worker takes the first waiting request,
gathers more for up to ``max_wait_ms`` or until ``max_batch`` tiles, embeds them in one forward
pass (as Triton's dynamic batcher and clip-as-service do) and hands each caller its rows. So
forward passes never overlap (the worker's torch threads have the cores they were given), and a
caller waiting for its embedding holds only an idle thread.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from histo.errors import InvalidInputError

if TYPE_CHECKING:
    from histo.embedding import Embedder


@dataclass(frozen=True)
class Batching:
    """How a server embeds queries: at most ``max_batch`` tiles per forward pass, gathered for up
    to ``max_wait_ms``."""

    max_batch: int = 32
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise InvalidInputError(f"embedding batches need max_batch >= 1 and max_wait_ms >= 0, got {self}")


@dataclass
class _Request:
    tiles: np.ndarray
    done: Future[np.ndarray] = field(default_factory=Future)


class EmbedBatcher:
    """An ``Embedder`` stand-in (``dim``, ``meta``, ``embed``) that embeds on its own thread,
    batching the tiles of concurrent callers; ``close()`` stops the thread."""

    def __init__(self, embedder: Embedder, batching: Batching | None = None) -> None:
        batching = batching or Batching()
        self.embedder, self.max_batch = embedder, batching.max_batch
        self.max_wait = batching.max_wait_ms / 1000.0
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closed = False
        #: Forward passes run and requests served, for tests and figures.
        self.batches = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._work, name=f"histo-embed-{embedder.name}", daemon=True)
        self._thread.start()

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def meta(self) -> Any:
        return self.embedder.meta

    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def digest(self) -> str:
        return self.embedder.digest

    def embed(self, tiles: np.ndarray) -> np.ndarray:
        """The tiles' embeddings, computed on the worker thread, perhaps with other callers' tiles."""
        if self._closed:
            raise InvalidInputError(f"the embedding worker of {self.name} is closed")
        request = _Request(np.asarray(tiles))
        self._requests.put(request)
        return request.done.result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._requests.put(None)
            self._thread.join(timeout=60)

    # -- worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._run(batch)
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``first`` and whatever else arrives within ``max_wait`` (up to ``max_batch`` tiles);
        True as well when the close sentinel came meanwhile."""
        batch, count = [first], len(first.tiles)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            try:
                nxt = self._requests.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
            count += len(nxt.tiles)
        return batch, False

    def _run(self, batch: list[_Request]) -> None:
        """One forward pass for the batch; each caller gets its rows, or the error."""
        try:
            vectors = self.embedder.embed(np.concatenate([r.tiles for r in batch]))
        except BaseException as exc:
            if len(batch) > 1:  # one caller's bad tiles must not fail the others: alone, each
                for request in batch:
                    self._run([request])
                return
            batch[0].done.set_exception(exc)  # the caller learns why; the worker lives on
            return
        self.batches += 1
        self.requests += len(batch)
        start = 0
        for request in batch:
            request.done.set_result(vectors[start : start + len(request.tiles)])
            start += len(request.tiles)


__all__ = ["Batching", "EmbedBatcher"]
