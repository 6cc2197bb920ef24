"""``python -m workers [--concurrency 1] [--queues histo]``: start a worker (one per GPU by default)."""

from __future__ import annotations

import argparse

from histo.queue_config import DEFAULT_QUEUE, worker_args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=1, help="pool processes (default 1: one per GPU)")
    parser.add_argument(
        "--queues", default=DEFAULT_QUEUE, help=f"comma list of queues (default {DEFAULT_QUEUE})"
    )
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--pool", default=None, help="prefork (default), solo or threads")
    options = parser.parse_args(argv)

    from workers.celery_app import app

    app.worker_main(
        ["worker", *worker_args(options.concurrency, options.queues, options.loglevel, options.pool)]
    )


if __name__ == "__main__":
    main()
