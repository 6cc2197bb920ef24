"""Throwaway real processes for benchmarks: a loopback ``redis-server`` and Celery workers.

Loopback addresses only; nothing is kept on disk; every process is stopped on the way out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from histo.queue_config import worker_args

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick on the loopback interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(port: int) -> bool:
    """True once a redis-server on ``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(folder: Path, timeout: float = 10.0) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server (or make redis)")
    port = free_port()
    argv = [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"]
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen([*argv, "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not redis_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start; see {folder / 'redis.log'}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def celery_workers(count: int, env: dict[str, str], folder: Path, timeout: float = 120.0) -> Iterator[None]:
    """``count`` Celery workers (concurrency 1 each), ready before this yields, stopped after."""
    started: list[subprocess.Popen[bytes]] = []
    logs = [folder / f"worker{n}.log" for n in range(count)]
    try:
        for n, log in enumerate(logs):
            argv = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", *worker_args(1)]
            with log.open("wb") as out:
                started.append(
                    subprocess.Popen(
                        [*argv, f"--hostname=bench{n}@%h"],
                        env=env,
                        cwd=REPO,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        _wait_ready(started, logs, timeout)
        yield
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _wait_ready(processes: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process, log in zip(processes, logs, strict=True):
        while " ready." not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"a Celery worker did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
