"""``histo.embed_batch``: one batch of tile references in, embedded tiles upserted, the job updated.

Thin by design (DESIGN.md §3): the work is ``histo.jobs.process_batch`` over ``histo.ingest.Ingestor``.
What lives here is process plumbing:

* Embedders are loaded lazily, once per worker process, on its first task — after the prefork
  pool has forked, so the parent never touches CUDA.
* A Qdrant server store is opened once per process. The embedded store (one owner process at a
  time) is opened per task and closed after it, so several workers take turns on it; a worker
  finding it locked waits a little, then lets Celery retry the task with exponential backoff and
  jitter.
* Delivery is at least once (``acks_late``): a redelivered batch re-upserts the same deterministic
  point ids (nothing new is embedded) and the tracker counts it once.
* Undecodable images are failures in the job record, not retries. A batch that cannot succeed
  (retries exhausted, wrong encoder, a bug, or a batch that killed its worker
  ``MAX_WORKER_DEATHS`` times) is recorded as failed, so the job always finishes.
* No task waits on another task.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from histo.data.datasets.base import Problem
from histo.data.tiling import TilingConfig
from histo.errors import (
    HistoError,
    InvalidInputError,
    StaleVectorsError,
    StoreLockedError,
    StoreUnavailableError,
)
from histo.jobs import BatchResult, Completion, JobTracker, TileBatch, process_batch
from histo.queue_config import EMBED_BATCH_TASK
from histo.store import VectorStore, open_store
from workers.celery_app import app, settings

if TYPE_CHECKING:
    from histo.embedding import Embedder

logger = get_task_logger(__name__)

#: Retries of a batch whose store is unavailable (backoff 2 s, 4 s, … capped at 60 s, full jitter).
MAX_RETRIES = 8
RETRY_BACKOFF_S = 2
RETRY_BACKOFF_MAX_S = 60
#: Deliveries of one batch that may kill their worker before the batch is given up (a poison batch).
MAX_WORKER_DEATHS = 3
#: How long a task waits for another worker to let go of the embedded index before retrying.
LOCK_WAIT_S = 20.0

_embedders: dict[str, Embedder] = {}
_server_store: VectorStore | None = None
_redis: Redis | None = None


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    """A new pool process starts with empty caches (nothing is inherited across fork)."""
    global _server_store, _redis
    _embedders.clear()
    _server_store = None
    _redis = None


def redis_client() -> Redis:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(settings.redis.url, decode_responses=True, socket_timeout=30)
    return _redis


def embedders_for(names: list[str]) -> dict[str, Embedder]:
    """The named encoders, loaded from ``HISTO_HOME/encoders`` once per process."""
    missing = [name for name in names if name not in _embedders]
    if missing:
        from histo.embedding import Embedder
        from histo.encoders.catalog import resolve_encoders

        for name, folder in resolve_encoders(",".join(missing), settings.encoders_dir).items():
            started = time.perf_counter()
            _embedders[name] = Embedder.from_artifact(folder)
            logger.info("loaded encoder %s in %.1f s", name, time.perf_counter() - started)
    return {name: _embedders[name] for name in names}


def _open_embedded(wait_s: float) -> VectorStore:
    """The embedded index, waiting up to ``wait_s`` while another worker holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_store(
                path=settings.index_dir,
                collection=settings.qdrant.collection,
                options=settings.qdrant.index_options(),
            )
        except StoreLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.05, 0.3))


@contextlib.contextmanager
def store_session(wait_s: float | None = None) -> Iterator[VectorStore]:
    """The store for one task: the process's server connection, or the embedded index for now."""
    global _server_store
    if settings.qdrant.url:
        if _server_store is None:
            _server_store = open_store(
                url=settings.qdrant.url,
                api_key=settings.qdrant.api_key,
                collection=settings.qdrant.collection,
                options=settings.qdrant.index_options(),
            )
        try:
            yield _server_store
        except StoreUnavailableError:
            store, _server_store = _server_store, None  # reconnect on the retry
            with contextlib.suppress(Exception):
                store.close()
            raise
        return
    with _open_embedded(LOCK_WAIT_S if wait_s is None else wait_s) as store:
        yield store


def check_artifacts(embedders: dict[str, Embedder], digests: dict[str, str]) -> None:
    """``StaleVectorsError`` when an encoder here is not the artifact the job was planned with
    (its digest differs): its vectors would sit beside the others' as if from one model."""
    for name, digest in digests.items():
        here = embedders[name].digest if name in embedders else None
        if here is not None and here != digest:
            raise StaleVectorsError(
                f"this worker's {name} artifact ({settings.encoders_dir / name}, digest {here}) is not the "
                f"one the job was queued with (digest {digest}); give every worker the same "
                "HISTO_HOME/encoders as the machine that runs histocli ingest, then rerun the ingest"
            )


def _optimize() -> None:
    """Build indexes once the job's last batch is in (the embedded shard has no background optimiser)."""
    try:
        with store_session() as store:
            store.optimize()
    except HistoError as exc:
        logger.warning("could not optimise the index after the job: %s", exc)


def run_batch(
    batch: TileBatch,
    encoders: list[str],
    tiling: dict[str, Any],
    max_pixels: int,
    digests: dict[str, str] | None = None,
) -> BatchResult:
    """Embed and upsert one batch in this process, with the artifacts the job was planned with."""
    from histo.ingest import Ingestor

    config = TilingConfig(**tiling)
    embedders = embedders_for(encoders)
    check_artifacts(embedders, digests or {})
    with store_session() as store:
        return process_batch(batch, Ingestor(store, embedders), config, max_pixels)


@app.task(
    bind=True,
    name=EMBED_BATCH_TASK,
    autoretry_for=(StoreUnavailableError, RedisConnectionError, RedisTimeoutError),
    retry_backoff=RETRY_BACKOFF_S,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def embed_batch(
    self: Task,
    job_id: str,
    batch: dict[str, Any],
    encoders: list[str],
    tiling: dict[str, Any],
    max_pixels: int,
    digests: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Embed one batch of tiles with every encoder, upsert them and count the batch in the job;
    ``digests``: the artifacts the job was planned with (a worker with others fails the batch)."""
    tracker = JobTracker(redis_client(), job_id)
    try:
        tile_batch = TileBatch.from_dict(batch)
    except InvalidInputError as exc:  # producer and worker disagree: settle the batch so the job ends
        batch_id = str(batch.get("id", "?")) if isinstance(batch, dict) else "?"
        tracker.complete_batch(batch_id, 0, BatchResult(failures=[Problem(f"batch {batch_id}", str(exc))]))
        return {"batch": batch_id, "outcome": "failed", "reason": str(exc)}
    if tracker.is_batch_done(tile_batch.id):
        logger.info("job %s batch %s already counted (redelivery): nothing to do", job_id, tile_batch.id)
        return {"batch": tile_batch.id, "outcome": Completion.DUPLICATE.value}
    died = tracker.begin_attempt(tile_batch.id)
    try:
        if died >= MAX_WORKER_DEATHS:
            reason = f"its worker died {died} times while embedding it (out of memory?); batch given up"
            tracker.fail_batch(tile_batch, reason)
            return {"batch": tile_batch.id, "outcome": "failed", "reason": reason}
        result = run_batch(tile_batch, encoders, tiling, max_pixels, digests)
    except StoreUnavailableError as exc:
        if self.max_retries is not None and self.request.retries >= self.max_retries:
            tracker.fail_batch(tile_batch, f"store unavailable after {self.request.retries} retries: {exc}")
        raise
    except (RedisConnectionError, RedisTimeoutError):
        raise
    except HistoError as exc:  # wrong encoder name, bad tiling: retrying cannot help
        tracker.fail_batch(tile_batch, str(exc))
        return {"batch": tile_batch.id, "outcome": "failed", "reason": str(exc)}
    except Exception as exc:
        tracker.fail_batch(tile_batch, f"worker error: {type(exc).__name__}: {exc}")
        raise
    finally:
        with contextlib.suppress(RedisError):
            tracker.end_attempt(tile_batch.id)
    outcome = tracker.complete_batch(tile_batch.id, tile_batch.tiles, result)
    if outcome is Completion.UNKNOWN_JOB:
        logger.warning(
            "job %s is no longer recorded; batch %s was written but not counted", job_id, tile_batch.id
        )
    if outcome is Completion.FINISHED:
        _optimize()
    return {
        "batch": tile_batch.id,
        "outcome": outcome.value,
        "embedded": result.embedded,
        "skipped": result.skipped,
        "background": result.background,
        "failed": len(result.failures),
    }
