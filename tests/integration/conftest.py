"""Real processes for integration tests: a throwaway ``redis-server`` on a free loopback port, and
the small real search home (index, engine) that the gRPC and web tests share.

(``free_port`` and ``redis_answers`` are shared with the benchmarks, which start their own.)

The server keeps nothing on disk (``--save '' --appendonly no``) and listens on 127.0.0.1 only.
Tests that need it are skipped, with the reason, only when the binary is missing
(``apt-get install -y redis-server``; CI installs it).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from benchmarks.processes import free_port, redis_answers
from histo.data.tiling import TilingConfig
from histo.search import SearchEngine
from histo.store import EdgeStore
from tests.search_home import TILE, build_home

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: its port and its process."""

    port: int
    process: subprocess.Popen[bytes]

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def _start(binary: str, folder: Path) -> RedisServer | None:
    port = free_port()
    log = (folder / f"redis-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None  # e.g. the port was taken in between: try another one
        if redis_answers(port):
            return RedisServer(port, process)
        time.sleep(0.05)
    _stop(process)
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); CI installs it")
    folder = tmp_path_factory.mktemp("redis")
    server = None
    for _ in range(3):
        server = _start(binary, folder)
        if server is not None:
            break
    if server is None:
        logs = "\n".join(p.read_text(errors="replace") for p in folder.glob("redis-*.log"))
        pytest.fail(f"redis-server did not start on a loopback port:\n{logs}")
    try:
        yield server
    finally:
        _stop(server.process)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of an emptied database on the session's redis-server."""
    from redis import Redis

    url = redis_server.url(0)
    client = Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            client.close()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: two cores shared with a server and its client."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    """A built HISTO_HOME (tests/search_home.py), and a copy of it for `histocli` commands and
    subprocesses (the first is owned by this test process's store)."""
    home = tmp_path_factory.mktemp("home")
    build_home(home)
    copy = tmp_path_factory.mktemp("copy") / "home"
    shutil.copytree(home, copy)
    return home, copy


@pytest.fixture(scope="module")
def store(homes: tuple[Path, Path]) -> Iterator[EdgeStore]:
    with EdgeStore(homes[0] / "index") as s:
        yield s


@pytest.fixture(scope="module")
def engine(store: EdgeStore, homes: tuple[Path, Path]) -> SearchEngine:
    return SearchEngine.load(store, homes[0] / "encoders", tiling=TilingConfig(tile_size=TILE))
