"""The one Celery configuration that producers (``histocli ingest --queue``) and workers share.

Plain values only — no Celery import here (DESIGN.md §2): ``workers/celery_app.py`` builds the
worker's app from :func:`celery_config`, and the CLI builds its sending app from the same dict, so
both agree on broker, serializer, queue and task name without the CLI importing ``workers``.

Delivery semantics (DESIGN.md §3): a task is acknowledged only after it ran (``acks_late``), a task
whose worker process died is put back (``reject_on_worker_lost``), and each worker reserves one
message at a time (prefetch 1), so a GPU never hoards batches another GPU could run. Redis has no
real acknowledgements: kombu keeps an unacked message aside and puts it back on the queue once it
is older than the broker's ``visibility_timeout`` — which must therefore exceed the longest batch
and the longest retry countdown, or a slow batch runs twice (harmless: point ids are
deterministic, and the job tracker counts a batch once).
"""

from __future__ import annotations

from typing import Any

#: The task name producers send by (``send_task``) and the worker registers.
EMBED_BATCH_TASK = "histo.embed_batch"
#: The queue ingestion batches go to, and the one a worker consumes by default.
DEFAULT_QUEUE = "histo"
#: Where Celery finds the worker's app (``celery -A workers.celery_app worker``).
APP_MODULE = "workers.celery_app"
#: Seconds before an unacknowledged message is handed to another worker (kombu's default too).
DEFAULT_VISIBILITY_TIMEOUT = 3600
#: Task results are not the record of progress (``histo.jobs.JobTracker`` is); keep them a day.
RESULT_EXPIRES_S = 86_400


def restore_interval(visibility_timeout: int) -> int:
    """Seconds between a worker's sweeps for messages whose visibility timeout has run out.

    kombu sweeps every ``10 s x 10`` calls by default; a quarter of the timeout (1 s to 60 s)
    keeps redelivery prompt for short test timeouts and cheap for the default hour.
    """
    return max(1, min(60, visibility_timeout // 4))


def celery_config(redis_url: str, visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT) -> dict[str, Any]:
    """Celery settings (lower-case names) for Redis as broker and result backend."""
    if visibility_timeout < 1:
        raise ValueError(f"visibility timeout must be at least 1 s, got {visibility_timeout}")
    transport = {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": restore_interval(visibility_timeout),
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": DEFAULT_QUEUE,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": True,
        "result_expires": RESULT_EXPIRES_S,
        "worker_hijack_root_logger": True,
        "worker_send_task_events": False,
    }


def worker_args(
    concurrency: int = 1,
    queues: str | None = None,
    loglevel: str = "INFO",
    pool: str | None = None,
) -> list[str]:
    """Arguments after ``celery -A workers.celery_app worker``: one process per GPU by default."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    args = [
        f"--concurrency={concurrency}",
        "--prefetch-multiplier=1",
        f"--queues={queues or DEFAULT_QUEUE}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if pool:
        args.append(f"--pool={pool}")
    return args
