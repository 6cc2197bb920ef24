"""``histocli worker [--concurrency 1] [--queues histo]``: a Celery worker that embeds queued batches.

One worker per GPU, one process each (``--concurrency 1``), one message reserved at a time. The
worker runs Celery's own ``celery --app workers.celery_app worker`` command line in this process:
the app is the very one ``celery -A workers.celery_app worker`` and ``python -m workers`` start,
loaded by name, so the CLI does not import ``workers`` (DESIGN.md §2).
"""

from __future__ import annotations

import typer

from cli.common import console, domain_errors, settings_of
from histo.queue_config import APP_MODULE, DEFAULT_QUEUE, worker_args


@domain_errors
def worker(
    ctx: typer.Context,
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Pool processes (1 per GPU)."),
    queues: str = typer.Option(DEFAULT_QUEUE, "--queues", "-Q", help="Comma list of queues to consume."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="DEBUG, INFO, WARNING or ERROR."),
    pool: str | None = typer.Option(None, "--pool", "-P", help="prefork (default), solo or threads."),
) -> None:
    """Embed queued ingestion batches (histocli ingest --queue) and upsert them into the index."""
    from celery.bin.celery import celery as celery_command

    from cli.ingest_queue import connect_redis, safe_url

    settings = settings_of(ctx)
    connect_redis(settings.redis.url)  # one clear line instead of Celery's reconnect loop
    store = settings.qdrant.url or f"{settings.index_dir} (embedded; workers take turns)"
    console.print(
        f"worker: queues {queues}, concurrency {concurrency}, "
        f"broker {safe_url(settings.redis.url)}, store {store}",
        highlight=False,
    )
    args = ["--app", APP_MODULE, "worker", *worker_args(concurrency, queues, loglevel, pool)]
    celery_command.main(args=args, prog_name="histocli worker", auto_envvar_prefix="CELERY")
