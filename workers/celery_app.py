"""The workers' Celery app, built from ``Settings`` (an entry point: the only ``get_settings()`` here).

Start a worker with ``histocli worker``, ``python -m workers`` or
``celery -A workers.celery_app worker --concurrency=1 --prefetch-multiplier=1 --queues=histo``.
Redis is both broker and result backend (``HISTO_REDIS__URL``); everything else Celery needs comes
from ``histo.queue_config.celery_config``, which the CLI uses too when it sends batches.
"""

from __future__ import annotations

from celery import Celery

from histo.queue_config import celery_config
from histo.settings import Settings, get_settings
from workers.telemetry import install as install_telemetry


def make_celery(settings: Settings, visibility_timeout: int | None = None) -> Celery:
    """A Celery app on ``settings.redis.url`` with late acks, prefetch 1 and JSON only."""
    app = Celery("histo", include=["workers.tasks"])
    timeout = visibility_timeout if visibility_timeout is not None else settings.redis.visibility_timeout
    app.conf.update(celery_config(settings.redis.url, timeout))
    return app


settings = get_settings()
app = make_celery(settings)
install_telemetry(settings)  # metrics, JSON logs and request ids (HISTO_METRICS__*, HISTO_LOG__*)
