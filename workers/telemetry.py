"""A worker, observed: task counts and durations for Prometheus, JSON logs, a request id per task.

Wired to Celery's signals when ``workers.celery_app`` calls ``install(settings)``:

* **Metrics** (``HISTO_METRICS__WORKER_PORT``, 0 = off): ``histo_worker_tasks_total{task, state}``
  (state ``succeeded``, ``failed``, ``retried``, or Celery's own name for rarer ends) and
  ``histo_worker_task_duration_seconds{task}``, counted in ``task_prerun`` / ``task_postrun``.
  The project's pool is prefork (``histocli worker``'s default, one child per GPU): tasks run in
  child processes, so the metrics use prometheus-client's multiprocess mode. At ``worker_init``
  (main process, before the pool forks) the worker makes a fresh folder for the children's
  counter files, points ``PROMETHEUS_MULTIPROC_DIR`` at it and serves their sum from the main
  process; the folder goes at ``worker_shutdown``. The solo and threads pools work the same way.
  A taken port stops the worker at once with one line saying so.
* **Logs** (``HISTO_LOG__FORMAT=json``): Celery's own handlers get ``JsonFormatter``; warnings
  become log records.
* **Request id**: each task runs in ``request_scope`` with the ``x-request-id`` header its sender
  set (``apply_async(headers={"x-request-id": ...})``), else its task id, which is already unique
  and is what Celery's own lines name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from contextvars import Token
from pathlib import Path
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
    worker_init,
    worker_ready,
    worker_shutdown,
)

from histo.errors import HistoError
from histo.observability import REQUEST_ID, REQUEST_ID_KEY, formatter, request_id_of
from histo.settings import Settings

log = logging.getLogger("workers")

#: Celery's end states under the names an operator reads; others are lower-cased.
STATES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}
#: A batch embeds in a fraction of a second (a GPU) to minutes (many large tiles on a CPU).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class TaskMetrics:
    """The task counter and duration histogram (multiprocess values: no registry of their own)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.tasks = Counter(
            "histo_worker_tasks_total",
            "Tasks run by this worker, by end state.",
            ["task", "state"],
            registry=None,
        )
        self.duration = Histogram(
            "histo_worker_task_duration_seconds",
            "Time a task ran, in seconds (retried and failed runs included).",
            ["task"],
            registry=None,
            buckets=DURATION_BUCKETS,
        )


class _State:
    settings: Settings | None = None
    metrics: TaskMetrics | None = None
    folder: Path | None = None
    url: str = ""


#: task id -> (start, the request-id token to reset), per process.
_running: dict[str, tuple[float, Token[str | None]]] = {}


def install(settings: Settings) -> None:
    """Use ``settings`` (log format, metrics port) when the worker starts."""
    _State.settings = settings


def _multiprocess_folder() -> Path:
    """A fresh folder for the pool's metric files, in ``PROMETHEUS_MULTIPROC_DIR``; metrics made from
    now on in this process and its children write there (even if prometheus_client was imported
    before the variable was set)."""
    from prometheus_client import values

    folder = Path(tempfile.mkdtemp(prefix="histo-worker-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    values.ValueClass = values.MultiProcessValue()
    return folder


@worker_init.connect
def _start_metrics(**_: Any) -> None:
    settings = _State.settings
    if settings is None or not settings.metrics.worker_port:
        return
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from histo.prometheus import serve_metrics

    _State.folder = _multiprocess_folder()
    _State.metrics = TaskMetrics()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(_State.folder))
    cfg = settings.metrics
    try:
        port = serve_metrics(registry, cfg.host, cfg.worker_port, "HISTO_METRICS__WORKER_PORT").server_port
    except HistoError as exc:
        _remove_folder()
        raise SystemExit(f"error: {exc}") from None  # Celery logs and ignores anything milder
    _State.url = f"http://{cfg.host}:{port}/metrics"


@worker_ready.connect
def _say_where(**_: Any) -> None:
    if _State.url:  # logging is set up by now (not yet at worker_init)
        log.info("metrics on %s", _State.url)


@worker_shutdown.connect
def _remove_folder(**_: Any) -> None:
    if _State.folder is not None:
        shutil.rmtree(_State.folder, ignore_errors=True)
        _State.folder = None


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_logs(logger: logging.Logger, **_: Any) -> None:
    settings = _State.settings
    if settings is None or settings.log.format == "text":
        return
    for handler in logger.handlers:
        handler.setFormatter(formatter(settings.log.format))


@task_prerun.connect
def _task_started(task_id: str, task: Any, **_: Any) -> None:
    header = getattr(task.request, REQUEST_ID_KEY, None)
    request_id = request_id_of(header) if header else task_id
    _running[task_id] = (time.perf_counter(), REQUEST_ID.set(request_id))


@task_postrun.connect
def _task_ended(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started, token = _running.pop(task_id, (None, None))
    if token is not None:
        with contextlib.suppress(ValueError):  # set in another context: nothing of ours to undo
            REQUEST_ID.reset(token)
    metrics = _State.metrics
    if metrics is None or started is None:
        return
    name = str(getattr(task, "name", "") or "unknown")
    metrics.tasks.labels(name, STATES.get(state or "", (state or "unknown").lower())).inc()
    metrics.duration.labels(name).observe(time.perf_counter() - started)


__all__ = ["STATES", "TaskMetrics", "install"]
