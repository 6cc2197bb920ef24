"""Faults injected into real processes; the goal each time is that nothing is lost or doubled.

* ``histocli ingest`` (embedded index) SIGKILLed mid-run: the rerun opens the index (no lock left
  behind, not even by the orphaned loader workers) and completes it, every tile once, whole.
* redis-server killed and restarted on the same port mid ``--queue`` ingest (the test Redis keeps
  nothing on disk, so the queue and the job record are gone): the follower stops with one line,
  the worker reconnects, and a rerun of the same command completes, every tile once.
* The Qdrant server behind a running ``python -m services.search`` goes away: searches answer
  UNAVAILABLE naming the server, and succeed again once it is back; a server that cannot reach
  Qdrant at start says so in one line.
* A worker task whose store is unreachable retries a bounded number of times, then records a
  clear failure; a store that fails once mid-write leaves no partial point behind.

Already covered elsewhere (tests/integration/test_distributed_ingest.py, test_grpc_service.py):
a killed worker's batch is redelivered, a locked embedded index fails after its retries, a down
broker is one line, and a store error inside the engine maps to UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from histo.client import SearchClient, StoreUnavailableError
from histo.data.datasets import scan_dataset
from histo.data.records import point_id
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig, iter_tiles
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import StoreUnavailableError as DomainStoreUnavailable
from histo.jobs import JobTracker, list_jobs, plan_batches
from histo.queue_config import worker_args
from histo.settings import QdrantSettings, RedisSettings, Settings
from histo.store import VectorStore, open_store
from histo.store.edge import LOCK_NAME
from tests.integration.conftest import free_port
from tests.integration.fake_qdrant import FakeQdrant

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TILE = 64
ENCODERS = ("colorhist", "random")
MAX_PIXELS = 10**8


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def make_home(home: Path) -> None:
    """The two baseline encoders at 64 px input, written before any process needs them."""
    for name in ENCODERS:
        make_baseline_artifact(name, home / "encoders" / name, input_size=TILE)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update(HISTO_HOME=str(home), HISTO_TILING__TILE_SIZE=str(TILE), PYTHONUNBUFFERED="1", **extra)
    return env


def expected_ids(root: Path, dataset: str) -> set[str]:
    """Every tissue tile's point id, computed the way ingestion computes it."""
    config = TilingConfig(tile_size=TILE)
    return {t.id for r in scan_dataset(root, dataset).records for t in iter_tiles(r, config, MAX_PIXELS)}


def open_when_free(index: Path, timeout: float = 30.0) -> VectorStore:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_store(path=index)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def assert_every_tile_once_and_whole(
    index: Path, ids: set[str], encoders: tuple[str, ...] = ENCODERS
) -> None:
    """Exactly the expected points, each with every named vector (no partial point)."""
    with open_when_free(index) as store:
        records = list(store.scroll(with_vectors=list(encoders)))
        stats = store.stats()
    found = [r.id for r in records]
    assert len(found) == len(set(found)) == len(ids) and set(found) == ids
    assert stats["points"] == len(ids)
    assert {name: v["points"] for name, v in stats["vectors"].items()} == dict.fromkeys(encoders, len(ids))
    assert all(set(r.vectors) == set(encoders) and all(r.vectors.values()) for r in records)


def lock_is_free(path: Path) -> bool:
    """True when nobody holds the flock on ``path`` (checked without keeping it)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def live_members(group: int) -> list[int]:
    """Pids of the process group that are alive (zombies awaiting their reaper excluded)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                alive.append(int(entry.name))
    return alive


def kill_group(process: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# Embedded ingest killed mid-run
# ------------------------------------------------------------------------------------------------


def test_a_killed_embedded_ingest_leaves_no_lock_and_the_rerun_completes(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "bach"
    make_home(home)
    write_synthetic("bach", root, slides=2, tiles_per_slide=16, seed=3, tile_size=TILE)
    ids = expected_ids(root, "bach")
    env = env_for(home)
    command = [str(BIN / "histocli"), "ingest", str(root), "-d", "bach", "-e", ",".join(ENCODERS)]
    progress = tmp_path / "progress.txt"
    with progress.open("wb") as err:  # one loader worker: the forked child that used to keep the lock
        first = subprocess.Popen(
            [*command, "--batch-size", "4", "--workers", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:

        def tiles_written() -> int:
            assert first.poll() is None, progress.read_text(errors="replace")
            counts = re.findall(r"(\d+) embedded", progress.read_text(errors="replace"))
            return int(counts[-1]) if counts else 0

        wait_for(lambda: tiles_written() >= 8, 120, "two batches to be written")  # counted once upserted
        os.kill(first.pid, signal.SIGKILL)  # the ingesting process only: a crash, not a clean stop
        first.wait(timeout=10)
        lock = home / "index" / LOCK_NAME
        wait_for(lambda: lock_is_free(lock), 10, "the index lock to be free")
        wait_for(lambda: not live_members(first.pid), 10, "the orphaned loader workers to end")
    finally:
        kill_group(first)

    rerun = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["tiles"], summary["failed"]) == (len(ids), 0)
    assert summary["embedded"] + summary["skipped"] == len(ids)
    assert summary["skipped"] >= 8  # what the killed run wrote survived, and is not embedded again
    assert_every_tile_once_and_whole(home / "index", ids)


# ------------------------------------------------------------------------------------------------
# redis-server restarted mid queue ingest
# ------------------------------------------------------------------------------------------------


def redis_on(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A redis-server on ``port`` (the conftest's settings: loopback only, nothing kept on disk)."""
    binary = "redis-server"
    log = (folder / f"redis-{port}-{time.monotonic_ns()}.log").open("wb")
    process = subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(folder)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()

    def answers() -> bool:
        assert process.poll() is None, f"redis-server exited on port {port}"
        with contextlib.suppress(Exception):
            return bool(Redis(port=port, socket_timeout=0.5).ping())
        return False

    wait_for(answers, 10, f"redis-server on port {port}")
    return process


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A redis-server this test may kill and restart on the same port."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); CI installs it")
    port = free_port()
    state: dict[str, Any] = {"port": port, "url": f"redis://127.0.0.1:{port}/0"}
    state["process"] = redis_on(port, tmp_path)
    try:
        yield state
    finally:
        kill_group_or_process(state["process"])


def kill_group_or_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


class Worker:
    """A Celery worker (solo pool) in its own session, stopped warm or killed as a group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        argv = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", *worker_args(1, pool="solo")]
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*argv, "--hostname=faults@%h"],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: " ready." in self.text(), 90, "the worker to be ready")

    def text(self) -> str:
        assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_group(self.process)


def test_redis_restarted_mid_queue_ingest_then_a_rerun_completes(
    tmp_path: Path, own_redis: dict[str, Any]
) -> None:
    home, root = tmp_path / "home", tmp_path / "bach"
    make_home(home)
    write_synthetic("bach", root, slides=2, tiles_per_slide=16, seed=4, tile_size=TILE)
    ids = expected_ids(root, "bach")
    env = env_for(home, HISTO_REDIS__URL=own_redis["url"])
    # one cheap encoder: the fault is in the queue, and the worker starts and embeds faster
    command = [str(BIN / "histocli"), "ingest", str(root), "-d", "bach", "-e", "colorhist"]
    command += ["--queue", "--batch-size", "4", "--json"]
    worker = Worker(env, tmp_path / "worker.log")
    try:
        client = Redis.from_url(own_redis["url"], decode_responses=True)
        first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: bool(list_jobs(client)), 90, "the job to be queued")
            tracker = JobTracker(client, list_jobs(client)[0])
            wait_for(lambda: tracker.snapshot().batches_done >= 1, 90, "a batch to be done")
            assert not tracker.snapshot().finished  # batches are still queued and in flight
            own_redis["process"].kill()  # a crash: the queue and the job record are gone
            own_redis["process"].wait(timeout=10)
            time.sleep(1.5)  # the follower and the worker notice
            own_redis["process"] = redis_on(own_redis["port"], tmp_path)
            out, err = first.communicate(timeout=60)
        finally:
            kill_group_or_process(first)
        if first.returncode == 0:  # it may have finished only if redis came back with the job: it cannot
            pytest.fail(f"the follower reported success for a job Redis lost: {out!r}")
        text = err.decode()
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        assert first.returncode == 1 and len(errors) == 1 and text.rstrip().endswith(errors[0]), text
        assert "lost redis-server at" in errors[0] or "vanished from redis-server" in errors[0]
        assert "rerun the same ingest command" in errors[0] and "Traceback" not in text

        rerun = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr + worker.text()[-3000:]
        summary = json.loads(rerun.stdout)
        assert summary["state"] == "finished" and summary["batches_done"] == summary["batches"]
        assert (summary["done"], summary["failed"], summary["background"]) == (len(ids), 0, 0)
        assert summary["embedded"] + summary["skipped"] == len(ids)
        assert summary["skipped"] >= 4  # the batch done before the crash is not embedded again
        worker.text()  # still alive: it reconnected by itself
    finally:
        worker.stop()
    assert_every_tile_once_and_whole(home / "index", ids, ("colorhist",))


# ------------------------------------------------------------------------------------------------
# The Qdrant server behind the search service goes away
# ------------------------------------------------------------------------------------------------


def start_service(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.search", "--port", "0", "--torch-threads", "1", "--grace", "1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # log lines (httpx's requests) may come first
        seen.append(line)
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        if match:
            return process, match.group(1)
    process.kill()
    pytest.fail(f"the search service did not start: {''.join(seen)}")


def test_search_answers_unavailable_while_qdrant_is_down_and_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=TILE)
    dim = Embedder.from_artifact(home / "encoders" / "colorhist").dim
    fake = FakeQdrant({"colorhist": dim}).start()
    process, address = start_service(env_for(home, HISTO_QDRANT__URL=fake.url))
    try:
        with SearchClient(address, timeout=60) as client:
            client.wait_ready(60)
            assert client.search(vector=[0.5] * dim, top_k=3).hits == []  # the store answers
            fake.stop()
            with pytest.raises(StoreUnavailableError) as caught:
                client.search(vector=[0.5] * dim, top_k=3)
            assert caught.value.grpc_code == "UNAVAILABLE"  # type: ignore[attr-defined]
            message = str(caught.value)
            assert f"cannot reach Qdrant at {fake.url}" in message and "Connection refused" in message
            assert client.health() == "SERVING"  # the service is fine; its store is not
            back = FakeQdrant({"colorhist": dim}, port=fake.port).start()
            try:
                assert client.search(vector=[0.5] * dim, top_k=3).hits == []  # no restart needed
            finally:
                back.stop()
    finally:
        fake.stop()
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert "Traceback" not in rest


def test_search_service_without_its_qdrant_is_one_line_and_exit_1(tmp_path: Path) -> None:
    home = tmp_path / "home"
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run(
        [sys.executable, "-m", "services.search", "--port", "0"],
        env=env_for(home, HISTO_QDRANT__URL=nowhere),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert (
        run.stderr.startswith(f"error: cannot reach Qdrant at {nowhere}")
        and "HISTO_QDRANT__URL" in run.stderr
    )


# ------------------------------------------------------------------------------------------------
# Worker tasks: bounded retries, no partial points
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def tasks(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``workers.tasks`` run eagerly in this process (retries at once), on the test Redis."""
    from workers import tasks as module

    make_home(tmp_path / "home")
    monkeypatch.setattr(
        module, "settings", Settings(home=tmp_path / "home", redis=RedisSettings(url=redis_url))
    )
    monkeypatch.setattr(module, "_redis", None)
    monkeypatch.setattr(module, "_server_store", None)
    monkeypatch.setattr(module, "_embedders", {})
    monkeypatch.setattr(module.embed_batch, "max_retries", 3)
    monkeypatch.setattr(module.embed_batch, "store_errors_even_if_ignored", False)  # no result backend
    yield module


def one_job(tmp_path: Path, redis_url: str) -> tuple[JobTracker, Any, list[Any]]:
    """A job of one batch: four tiles of one synthetic image, both encoders."""
    root = tmp_path / "data"
    write_synthetic("bach", root, slides=1, tiles_per_slide=4, seed=5, tile_size=TILE)
    records = scan_dataset(root, "bach").records[:1]
    config = TilingConfig(tile_size=TILE)
    (batch,) = plan_batches(records, config, MAX_PIXELS).batches
    tracker = JobTracker.create(
        Redis.from_url(redis_url, decode_responses=True),
        dataset="bach",
        root=str(root),
        encoders=list(ENCODERS),
        images=1,
        total_tiles=batch.tiles,
        total_batches=1,
    )
    args = [tracker.job_id, batch.to_dict(), list(ENCODERS), dataclasses.asdict(config), MAX_PIXELS]
    return tracker, batch, args


def test_a_task_whose_qdrant_keeps_failing_retries_a_bounded_number_of_times(
    tmp_path: Path, redis_url: str, tasks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, batch, args = one_job(tmp_path, redis_url)
    with FakeQdrant({}, fail_with=503) as fake:
        settings = tasks.settings.model_copy(update={"qdrant": QdrantSettings(url=fake.url)})
        monkeypatch.setattr(tasks, "settings", settings)
        outcome = tasks.embed_batch.apply(args=args)
    assert outcome.state == "FAILURE" and isinstance(outcome.result, DomainStoreUnavailable)
    assert len(fake.requests) == 1 + 3  # one connection probe per attempt: the first and 3 retries
    assert not [r for r in fake.requests if r.method in ("PUT", "POST")]  # nothing was written
    job = tracker.snapshot()
    assert job.finished and job.done == batch.tiles and job.embedded == 0
    (failure,) = job.failures
    assert failure.path == batch.paths[0] and "store unavailable after 3 retries" in failure.reason
    assert fake.url in failure.reason and "HTTP 503" in failure.reason
    assert tasks.embed_batch.apply(args=args).result["outcome"] == "duplicate"  # settled for good


def test_a_task_whose_qdrant_is_gone_fails_with_a_clear_message(
    tmp_path: Path, redis_url: str, tasks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, _, args = one_job(tmp_path, redis_url)
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(
        tasks, "settings", tasks.settings.model_copy(update={"qdrant": QdrantSettings(url=nowhere)})
    )
    outcome = tasks.embed_batch.apply(args=args)
    assert outcome.state == "FAILURE" and isinstance(outcome.result, DomainStoreUnavailable)
    (failure,) = tracker.snapshot().failures
    assert f"cannot reach Qdrant at {nowhere}" in failure.reason and "after 3 retries" in failure.reason


def test_a_write_that_fails_once_is_retried_and_leaves_no_partial_point(
    tmp_path: Path, redis_url: str, tasks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histo.store.edge import EdgeStore

    tracker, batch, args = one_job(tmp_path, redis_url)
    real_insert = EdgeStore._insert
    calls: list[int] = []

    def insert_failing_once(self: EdgeStore, writes: Any) -> None:
        calls.append(len(writes))
        if len(calls) == 1:
            raise DomainStoreUnavailable("the disk went away for a moment")
        real_insert(self, writes)

    monkeypatch.setattr(EdgeStore, "_insert", insert_failing_once)
    result = tasks.embed_batch.apply(args=args).result
    assert result["outcome"] == "finished" and (result["embedded"], result["failed"]) == (batch.tiles, 0)
    assert calls == [batch.tiles, batch.tiles]  # whole points, all encoders in one write, twice
    job = tracker.snapshot()
    assert (job.done, job.embedded, job.failed) == (batch.tiles, batch.tiles, 0)
    ids = {
        point_id(item.record.dataset, item.record.rel_path, box) for item in batch.items for box in item.boxes
    }
    assert_every_tile_once_and_whole(tmp_path / "home" / "index", ids)
