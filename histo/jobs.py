"""Distributed ingestion, without Celery: plan batches of tile references, run one, track the job.

The queue path of ``histocli ingest --queue`` in three plain pieces (DESIGN.md §1, §3):

* :func:`plan_batches` reads image **headers only** and cuts the data set into JSON-serialisable
  :class:`TileBatch` es of grid boxes — references, never pixels. Whole images stay together in a
  batch where they fit, so a worker decodes each image once per batch.
* :func:`process_batch` is what a worker does with one batch: decode each image once, cut its
  boxes, drop background, and hand the tissue tiles to ``Ingestor.write`` (which embeds only the
  vectors the store still lacks and upserts whole points). An undecodable image is a recorded
  failure, never an exception.
* :class:`JobTracker` keeps a job's progress in Redis. A batch is counted when its id first enters
  the job's set of finished batches (one atomic script), so a redelivered batch — Celery's
  ``acks_late`` delivers at least once — is never counted twice.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from histo.data.datasets.base import Problem
from histo.data.images import load_rgb, open_header
from histo.data.records import Box, ImageRecord, Tile, point_id, tile_payload
from histo.data.slides import is_slide, plan_slide, slide_tiles
from histo.data.tiling import TilingConfig, boxes_for, check_tileable, cut_tile
from histo.data.tissue import is_tissue
from histo.errors import HistoError, ImageDecodeError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from redis import Redis
    from redis.typing import EncodableT, FieldT

    from histo.ingest import Ingestor

DEFAULT_TILES_PER_BATCH = 64
KEY_PREFIX = "histo:job"
JOBS_KEY = "histo:jobs"
#: How long a job's record outlives its last change (a week): long enough to re-attach.
JOB_TTL_S = 7 * 24 * 3600

_ORIENTATION_TAG = 0x0112
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that exchange width and height
_RECORD_FIELDS = tuple(f.name for f in fields(ImageRecord))


# ------------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------------


def record_to_dict(record: ImageRecord) -> dict[str, Any]:
    """An ``ImageRecord`` as plain JSON values (the path as a string)."""
    data = asdict(record)
    data["path"] = str(record.path)
    return data


def record_from_dict(data: Mapping[str, Any]) -> ImageRecord:
    """The inverse of :func:`record_to_dict`; unknown or missing fields are an input error."""
    unknown = set(data) - set(_RECORD_FIELDS)
    if unknown:
        raise InvalidInputError(
            f"image record has unknown fields {sorted(unknown)}; producer and worker differ"
        )
    try:
        return ImageRecord(**{**data, "path": Path(data["path"])})
    except (KeyError, TypeError) as exc:
        raise InvalidInputError(f"image record is incomplete ({exc}); producer and worker differ") from None


@dataclass(frozen=True)
class BatchItem:
    """One image of a batch and the grid boxes of it this batch covers."""

    record: ImageRecord
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class TileBatch:
    """A task's worth of tile references: batch id, image records and their boxes; no pixels."""

    id: str
    items: tuple[BatchItem, ...]

    @property
    def tiles(self) -> int:
        """Grid boxes in the batch (before the tissue test)."""
        return sum(len(item.boxes) for item in self.items)

    @property
    def paths(self) -> list[str]:
        return [str(item.record.path) for item in self.items]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, as a task argument."""
        return {
            "id": self.id,
            "items": [
                {"record": record_to_dict(item.record), "boxes": [[b.x, b.y, b.w, b.h] for b in item.boxes]}
                for item in self.items
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TileBatch:
        try:
            items = tuple(
                BatchItem(
                    record_from_dict(item["record"]), tuple(Box(*map(int, box)) for box in item["boxes"])
                )
                for item in data["items"]
            )
            return cls(str(data["id"]), items)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed tile batch ({exc!r}); producer and worker differ") from None


@dataclass
class BatchPlan:
    """The batches of a data set, plus the images whose header could not be read."""

    batches: list[TileBatch] = field(default_factory=list)
    failures: list[Problem] = field(default_factory=list)
    images: int = 0

    @property
    def tiles(self) -> int:
        return sum(batch.tiles for batch in self.batches)

    def __iter__(self) -> Iterator[TileBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF rotation ``load_rgb`` applies, read from the header only."""
    width, height = image.size
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a malformed EXIF block: load_rgb would not rotate either
        orientation = None
    return (height, width) if orientation in _SWAPPED_ORIENTATIONS else (width, height)


def _reason(record: ImageRecord, exc: Exception) -> str:
    return str(exc).removeprefix(f"{record.path}: ")


def _grid(record: ImageRecord, config: TilingConfig, max_pixels: int) -> tuple[ImageRecord, list[Box]]:
    """A photo's grid boxes from its header; a slide's tissue boxes from its thumbnail (the record
    then carries the slide's µm/px, so the worker's payload says it)."""
    if is_slide(record.path):
        return plan_slide(record, config)
    with open_header(record.path, max_pixels) as image:
        size = upright_size(image)
    check_tileable(size, str(record.path))  # as in-process ingestion refuses it
    return record, boxes_for(size, record, config)


def plan_batches(
    records: Iterable[ImageRecord],
    config: TilingConfig,
    max_pixels: int,
    tiles_per_batch: int = DEFAULT_TILES_PER_BATCH,
) -> BatchPlan:
    """Cut the records' grid boxes into batches of at most ``tiles_per_batch`` tiles.

    Images are packed whole while they fit; an image with more boxes than a batch holds is split
    into full batches and its remainder shares the next one. Batch ids are ``b000000``, ``b000001``,
    … in data set order: unique within a job, which is all the tracker needs.
    """
    if tiles_per_batch < 1:
        raise InvalidInputError(f"tiles per batch must be at least 1, got {tiles_per_batch}")
    plan = BatchPlan()
    pending: list[BatchItem] = []
    room = tiles_per_batch

    def flush() -> None:
        nonlocal pending, room
        if pending:
            plan.batches.append(TileBatch(f"b{len(plan.batches):06d}", tuple(pending)))
        pending, room = [], tiles_per_batch

    for record in records:
        plan.images += 1
        try:
            record, boxes = _grid(record, config, max_pixels)
        except HistoError as exc:
            plan.failures.append(Problem(str(record.path), _reason(record, exc)))
            continue
        if len(boxes) > room and pending:
            flush()
        while boxes:
            take, boxes = boxes[:room], boxes[room:]
            pending.append(BatchItem(record, tuple(take)))
            room -= len(take)
            if room == 0:
                flush()
    flush()
    return plan


# ------------------------------------------------------------------------------------------------
# Process one batch
# ------------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What one batch did to its tiles; ``failures`` names images that could not be decoded."""

    embedded: int = 0
    skipped: int = 0
    background: int = 0
    failures: list[Problem] = field(default_factory=list)


def process_batch(batch: TileBatch, ingestor: Ingestor, config: TilingConfig, max_pixels: int) -> BatchResult:
    """Decode each image once, cut its boxes, drop background, embed what is missing and upsert."""
    result = BatchResult()
    tiles: list[Tile] = []
    for item in batch.items:
        try:
            found = _item_tiles(item, config, max_pixels)
        except ImageDecodeError as exc:
            result.failures.append(Problem(str(item.record.path), _reason(item.record, exc)))
            continue
        result.background += len(item.boxes) - len(found)
        tiles.extend(found)
    written = ingestor.write(tiles)
    result.embedded, result.skipped = written.embedded, written.skipped
    return result


def _item_tiles(item: BatchItem, config: TilingConfig, max_pixels: int) -> list[Tile]:
    """The tissue tiles of one batch item: a photo decoded once, or a slide's boxes read one by one
    (a slide tile that cannot be decoded fails the item, as a corrupt photo does)."""
    record = item.record
    if is_slide(record.path):
        return list(slide_tiles(record, item.boxes, config))
    image = load_rgb(record.path, max_pixels)
    try:
        tiles = []
        for box in item.boxes:
            pixels = cut_tile(image, box, config.tile_size)
            if is_tissue(pixels, config.min_tissue):
                payload = tile_payload(record, box, config.tile_size)
                tiles.append(Tile(point_id(record.dataset, record.rel_path, box), box, pixels, payload))
        return tiles
    finally:
        image.close()


# ------------------------------------------------------------------------------------------------
# Track a job in Redis
# ------------------------------------------------------------------------------------------------


class Completion(Enum):
    """What recording a batch did."""

    COUNTED = "counted"  # new batch, counters moved
    FINISHED = "finished"  # new batch, and it was the job's last
    DUPLICATE = "duplicate"  # already counted (a redelivery): nothing moved
    UNKNOWN_JOB = "unknown-job"  # the job record is gone (expired or deleted)


# KEYS: job hash, batch set, failures hash.
# ARGV: batch id, tiles, embedded, skipped, background, now, ttl, then path/reason pairs.
_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'embedded', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'skipped', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'background', ARGV[5])
for i = 8, #ARGV, 2 do redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]) end
local total = tonumber(redis.call('HGET', KEYS[1], 'total_batches'))
local ttl = tonumber(ARGV[7])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ttl) end
if redis.call('SCARD', KEYS[2]) >= total then
  redis.call('HSET', KEYS[1], 'state', 'finished', 'finished', ARGV[6])
  return 2
end
redis.call('HSET', KEYS[1], 'state', 'running')
return 1
"""
_COMPLETION_CODES = {
    -1: Completion.UNKNOWN_JOB,
    0: Completion.DUPLICATE,
    1: Completion.COUNTED,
    2: Completion.FINISHED,
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class JobSnapshot:
    """A job's record at one moment: totals, progress counters and failures."""

    job_id: str
    dataset: str
    root: str
    encoders: tuple[str, ...]
    state: str
    images: int
    total_tiles: int
    total_batches: int
    batches_done: int
    done: int
    embedded: int
    skipped: int
    background: int
    started: float
    finished_at: float | None
    failures: tuple[Problem, ...]

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def failed(self) -> int:
        """Images that failed (unreadable header, undecodable, or their batch gave up)."""
        return len(self.failures)

    @property
    def seconds(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started)

    @property
    def tiles_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The in-process ``IngestSummary.as_dict`` keys, plus the job's own."""
        return {
            "job_id": self.job_id,
            "state": self.state,
            "dataset": self.dataset,
            "encoders": list(self.encoders),
            "images": self.images,
            "tiles": self.total_tiles,
            "done": self.done,
            "embedded": self.embedded,
            "skipped": self.skipped,
            "background": self.background,
            "failed": self.failed,
            "batches": self.total_batches,
            "batches_done": self.batches_done,
            "seconds": round(self.seconds, 2),
            "tiles_per_second": round(self.tiles_per_second, 1),
            "failures": [{"path": p.path, "reason": p.reason} for p in self.failures],
        }


class JobTracker:
    """One ingestion job's record in Redis.

    Keys: ``histo:job:<id>`` (hash: totals, counters, state, times), ``…:batches`` (set of
    finished batch ids), ``…:failures`` (hash path -> reason, so one image fails once) and the
    index ``histo:jobs`` (sorted set by start time), from which the CLI lists jobs to re-attach.
    Every key expires a week after the job last moved.
    """

    def __init__(self, client: Redis, job_id: str, ttl_s: int = JOB_TTL_S) -> None:
        if not job_id or any(c.isspace() for c in job_id):
            raise InvalidInputError(f"job id {job_id!r} is not valid; copy it from `histocli ingest --queue`")
        self.client, self.job_id, self.ttl_s = client, job_id, ttl_s
        self.key = f"{KEY_PREFIX}:{job_id}"
        self.batches_key = f"{self.key}:batches"
        self.failures_key = f"{self.key}:failures"
        self.attempts_key = f"{self.key}:attempts"
        self._complete = client.register_script(_COMPLETE)

    @staticmethod
    def new_id(dataset: str) -> str:
        return f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"

    @classmethod
    def create(
        cls,
        client: Redis,
        *,
        dataset: str,
        root: str,
        encoders: Sequence[str],
        images: int,
        total_tiles: int,
        total_batches: int,
        failures: Sequence[Problem] = (),
        job_id: str | None = None,
        ttl_s: int = JOB_TTL_S,
    ) -> JobTracker:
        """Record a new job (state ``queued``, or ``finished`` when it has no batches)."""
        tracker = cls(client, job_id or cls.new_id(dataset), ttl_s)
        now = time.time()
        record: dict[FieldT, EncodableT] = {
            "dataset": dataset,
            "root": root,
            "encoders": json.dumps(list(encoders)),
            "images": images,
            "total_tiles": total_tiles,
            "total_batches": total_batches,
            "done": 0,
            "embedded": 0,
            "skipped": 0,
            "background": 0,
            "state": "queued" if total_batches else "finished",
            "started": now,
        }
        if not total_batches:
            record["finished"] = now
        pipe = client.pipeline()
        pipe.delete(tracker.key, tracker.batches_key, tracker.failures_key, tracker.attempts_key)
        pipe.hset(tracker.key, mapping=record)
        if failures:
            pipe.hset(tracker.failures_key, mapping={p.path: p.reason for p in failures})
            pipe.expire(tracker.failures_key, ttl_s)
        pipe.expire(tracker.key, ttl_s)
        pipe.zadd(JOBS_KEY, {tracker.job_id: now})
        pipe.execute()
        return tracker

    def begin_attempt(self, batch_id: str) -> int:
        """Note that a worker starts the batch; returns how many earlier attempts never ended.

        An attempt that never ended is a worker that died inside the batch (killed, out of memory,
        a crash in native code). Celery redelivers such a batch, so a batch that kills every worker
        would come back forever; the caller gives it up after a few.
        """
        pipe = self.client.pipeline()
        pipe.hincrby(self.attempts_key, batch_id, 1)
        pipe.expire(self.attempts_key, self.ttl_s)
        started, _ = pipe.execute()
        return int(started) - 1

    def end_attempt(self, batch_id: str) -> None:
        """The attempt ended (success, recorded failure or an exception Celery sees): forget it."""
        self.client.hdel(self.attempts_key, batch_id)

    def is_batch_done(self, batch_id: str) -> bool:
        return bool(self.client.sismember(self.batches_key, batch_id))

    def complete_batch(self, batch_id: str, tiles: int, result: BatchResult) -> Completion:
        """Count a batch once: counters move only when its id is new to the job."""
        args: list[str | int | float] = [
            batch_id,
            tiles,
            result.embedded,
            result.skipped,
            result.background,
            time.time(),
            self.ttl_s,
        ]
        for problem in result.failures:
            args.extend([problem.path, problem.reason])
        code = int(self._complete(keys=[self.key, self.batches_key, self.failures_key], args=args))
        return _COMPLETION_CODES[code]

    def fail_batch(self, batch: TileBatch, reason: str) -> Completion:
        """Give a batch up: every image in it is a failure with ``reason``, its tiles count as done."""
        failures = [Problem(path, reason) for path in dict.fromkeys(batch.paths)]
        return self.complete_batch(batch.id, batch.tiles, BatchResult(failures=failures))

    def exists(self) -> bool:
        return bool(self.client.exists(self.key))

    def snapshot(self) -> JobSnapshot:
        """The job now; ``NotFoundError`` (listing recent jobs) when there is no such job."""
        pipe = self.client.pipeline()
        pipe.hgetall(self.key)
        pipe.hgetall(self.failures_key)
        pipe.scard(self.batches_key)
        raw, raw_failures, batches_done = pipe.execute()
        if not raw:
            recent = ", ".join(list_jobs(self.client)[:5]) or "(none)"
            raise NotFoundError(
                f"no ingest job {self.job_id!r} in Redis (jobs are kept {self.ttl_s // 86400} days); "
                f"recent jobs: {recent}"
            )
        data = {_text(k): _text(v) for k, v in raw.items()}
        failures = sorted(
            (Problem(_text(path), _text(reason)) for path, reason in raw_failures.items()),
            key=lambda p: p.path,
        )
        return JobSnapshot(
            job_id=self.job_id,
            dataset=data.get("dataset", "-"),
            root=data.get("root", ""),
            encoders=tuple(json.loads(data.get("encoders", "[]"))),
            state=data.get("state", "queued"),
            images=int(data.get("images", 0)),
            total_tiles=int(data.get("total_tiles", 0)),
            total_batches=int(data.get("total_batches", 0)),
            batches_done=int(batches_done),
            done=int(data.get("done", 0)),
            embedded=int(data.get("embedded", 0)),
            skipped=int(data.get("skipped", 0)),
            background=int(data.get("background", 0)),
            started=float(data.get("started", 0.0)),
            finished_at=float(data["finished"]) if "finished" in data else None,
            failures=tuple(failures),
        )


def list_jobs(client: Redis) -> list[str]:
    """Ids of the jobs still recorded, newest first (index entries of expired jobs are pruned)."""
    ids = [_text(i) for i in client.zrevrange(JOBS_KEY, 0, -1)]
    if not ids:
        return []
    pipe = client.pipeline()
    for job_id in ids:
        pipe.exists(f"{KEY_PREFIX}:{job_id}")
    alive = pipe.execute()
    gone = [job_id for job_id, present in zip(ids, alive, strict=True) if not present]
    if gone:
        client.zrem(JOBS_KEY, *gone)
    return [job_id for job_id, present in zip(ids, alive, strict=True) if present]
