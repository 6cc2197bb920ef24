"""``histocli ingest DIR --layout LAYOUT [--name NAME] --queue`` and ``histocli ingest --attach JOB_ID``.

The queue path scans and plans here (image headers only), records the job in Redis, sends one
``histo.embed_batch`` task per batch by name (this package never imports ``workers``), then follows
the job with a progress bar until the workers are done and prints the same summary as the
in-process path. Ctrl-C detaches: the job keeps running, and ``--attach JOB_ID`` follows it again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import typer
from tqdm import tqdm

from cli.common import Target, console, err_console, open_index
from histo.data.tiling import TilingConfig
from histo.errors import HistoError, NotFoundError, StoreLockedError
from histo.jobs import JobSnapshot, JobTracker, plan_batches
from histo.queue_config import DEFAULT_QUEUE, EMBED_BATCH_TASK, celery_config
from histo.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

POLL_S = 0.5
RERUN_HINT = "rerun the same ingest command: tiles already in the index are skipped"
PING_TIMEOUT_S = 1.0
DETACHED_EXIT_CODE = 130
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tiles [{elapsed}{postfix}]"


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def connect_redis(url: str) -> Redis:
    """A client for ``url`` that has answered a PING; one clear error when redis-server is not there."""
    from redis import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        raise HistoError(
            f"redis-server not reachable at {safe_url(url)} ({type(exc).__name__}); "
            "start it (redis-server, or `docker compose up -d redis`) or set HISTO_REDIS__URL"
        ) from None
    return client


def run(
    settings: Settings,
    target: Target,
    folders: dict[str, Path],
    config: TilingConfig,
    tiles_per_batch: int,
    as_json: bool,
    mpp: float | None = None,
    no_reembed: bool = False,
) -> None:
    """Submit a new job, follow it to the end and print its summary; then choose the mosaics of
    the whole-slide images it indexed (for slide search)."""
    client = connect_redis(settings.redis.url)
    tracker = submit(settings, client, target, folders, config, tiles_per_batch, as_json, mpp, no_reembed)
    finish(settings, tracker, as_json)


def attach(settings: Settings, job_id: str, as_json: bool) -> None:
    """Follow a job already queued (``--attach``) to the end, as ``run`` does."""
    tracker = JobTracker(connect_redis(settings.redis.url), job_id)
    tracker.snapshot()  # NotFoundError (listing recent jobs) before any bar is drawn
    finish(settings, tracker, as_json)


def finish(settings: Settings, tracker: JobTracker, as_json: bool) -> None:
    snapshot = follow(tracker, settings.redis.url, progress=not as_json)
    report(snapshot, settings, as_json)
    mosaics = refresh_mosaics(settings, snapshot.dataset, list(snapshot.encoders))
    if mosaics and not as_json:
        console.print(
            f"{len(mosaics)} whole-slide images: {sum(mosaics.values())} mosaic tiles for slide search"
        )


def refresh_mosaics(settings: Settings, dataset: str, encoders: list[str]) -> dict[str, int]:
    """Choose the mosaics of every whole-slide image of ``dataset`` (workers index tiles only)."""
    from histo.encoder_choice import default_encoder
    from histo.encoders.artifact import list_artifacts
    from histo.slide_search import build_mosaics, slide_ids_of

    metas = {
        folder.name: meta for folder, meta in list_artifacts(settings.encoders_dir) if folder.name in encoders
    }
    encoder = default_encoder(metas)
    if encoder is None:
        return {}
    try:
        with open_index(settings) as store:
            return build_mosaics(store, encoder, dataset, slide_ids_of(store, dataset))
    except StoreLockedError as exc:
        err_console.print(
            f"[yellow]warning:[/yellow] slide mosaics not chosen ({exc}); run "
            f"`histocli index mosaics -d {dataset} -e {encoder}` when the index is free",
            highlight=False,
        )
        return {}


def submit(
    settings: Settings,
    client: Redis,
    target: Target,
    folders: dict[str, Path],
    config: TilingConfig,
    tiles_per_batch: int,
    quiet: bool = False,
    mpp: float | None = None,
    no_reembed: bool = False,
) -> JobTracker:
    """Scan, plan, record the job and send one task per batch. Each task carries the digest of
    every encoder's artifact here: a worker whose artifact differs fails the batch instead of
    writing vectors of another model (``histo.provenance``)."""
    from celery import Celery

    from histo.data.filestamp import stamp_records
    from histo.encoders.artifact import artifact_digest

    scan = target.scan(mpp)
    digests = {name: artifact_digest(folder) for name, folder in folders.items()}
    if no_reembed:
        from histo.provenance import refuse_stale

        with open_index(settings) as store:
            refuse_stale(store, digests, target.name)
    scan.records = stamp_records(scan.records, progress=not quiet)  # the workers write them per tile
    names = list(folders)  # workers load the same artifacts
    plan = plan_batches(scan.records, config, settings.images.max_pixels, tiles_per_batch)
    tracker = JobTracker.create(
        client,
        dataset=target.name,
        root=str(scan.root),
        encoders=names,
        images=len(scan.records),
        total_tiles=plan.tiles,
        total_batches=len(plan.batches),
        failures=[*scan.problems, *plan.failures],
    )
    producer = Celery("histocli", set_as_current=False)
    producer.conf.update(celery_config(settings.redis.url))
    tiling = dataclasses.asdict(config)
    with producer.producer_or_acquire() as kombu_producer:
        for batch in plan.batches:
            producer.send_task(
                EMBED_BATCH_TASK,
                args=[tracker.job_id, batch.to_dict(), names, tiling, settings.images.max_pixels],
                kwargs={"digests": digests},
                queue=DEFAULT_QUEUE,
                producer=kombu_producer,
            )
    say = err_console.print if quiet else console.print
    say(
        f"job {tracker.job_id}: {len(scan.records)} images, {plan.tiles} tiles "
        f"in {len(plan.batches)} batches queued for {', '.join(names)}",
        highlight=False,
    )
    if plan.batches and not producer.control.ping(timeout=PING_TIMEOUT_S):
        err_console.print(
            "[yellow]warning:[/yellow] no worker answered; the job waits in the queue until one starts "
            "(histocli worker)",
            highlight=False,
        )
    return tracker


def follow(tracker: JobTracker, url: str, progress: bool = True, poll_s: float = POLL_S) -> JobSnapshot:
    """Poll the job until it is finished; Ctrl-C detaches (exit 130) and says how to re-attach."""
    from redis.exceptions import RedisError

    try:
        snapshot = tracker.snapshot()
        with tqdm(
            total=snapshot.total_tiles,
            desc=f"job {tracker.job_id}",
            unit="tile",
            bar_format=BAR_FORMAT,
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            while True:
                # the job's own rate (tiles done since it was queued), the same after a re-attach
                bar.set_postfix_str(
                    f"{snapshot.tiles_per_second:.1f} tiles/s, {snapshot.failed} failed", False
                )
                bar.update(snapshot.done - bar.n)
                if snapshot.finished:
                    bar.refresh()
                    return snapshot
                time.sleep(poll_s)
                snapshot = tracker.snapshot()
    except KeyboardInterrupt:
        err_console.print(
            f"detached from job {tracker.job_id}; it keeps running on the workers. "
            f"Re-attach with: histocli ingest --attach {tracker.job_id}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(DETACHED_EXIT_CODE) from None
    except RedisError as exc:
        raise HistoError(
            f"lost redis-server at {safe_url(url)} while following job {tracker.job_id} "
            f"({type(exc).__name__}); once it is back, re-attach with: "
            f"histocli ingest --attach {tracker.job_id} (if it lost the job, {RERUN_HINT})"
        ) from None
    except NotFoundError:
        # the record went away mid-job: a redis-server restarted without persistence loses the
        # queue and the job alike, so re-attaching cannot help; a rerun redoes only what is missing
        raise HistoError(
            f"job {tracker.job_id} vanished from redis-server at {safe_url(url)} while running "
            f"(restarted without persistence?); {RERUN_HINT}"
        ) from None


def report(snapshot: JobSnapshot, settings: Settings, as_json: bool) -> None:
    """The final summary, and the failures file ``HISTO_HOME/logs/ingest-<dataset>-failures.tsv``."""
    from histo.ingest import write_failures

    failures_file = settings.logs_dir / f"ingest-{snapshot.dataset}-failures.tsv"
    write_failures(failures_file, list(snapshot.failures))
    if as_json:
        typer.echo(json.dumps(snapshot.as_dict(), indent=2))
        return
    console.print(
        f"job {snapshot.job_id}: {snapshot.images} images, {snapshot.total_tiles} tiles: "
        f"{snapshot.embedded} embedded, {snapshot.skipped} skipped (already indexed), "
        f"{snapshot.background} background, {snapshot.failed} failed; "
        f"{snapshot.tiles_per_second:.1f} tiles/s with {', '.join(snapshot.encoders)}",
        highlight=False,
    )
    for problem in snapshot.failures:
        console.print(f"  failed: {problem.path}: {problem.reason}", highlight=False, soft_wrap=True)
    if snapshot.failures:
        console.print(f"failures written to {failures_file}", highlight=False)
