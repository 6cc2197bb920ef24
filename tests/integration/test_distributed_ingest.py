"""Distributed ingestion: plan, process and track batches; a real Celery worker over a real Redis.

The end-to-end tests run real worker processes (``celery -A workers.celery_app worker``,
``histocli worker``, ``python -m workers``) against a throwaway redis-server, with the embedded
index in a temporary ``HISTO_HOME``, and encoders that need no training (colorhist, random).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from redis import Redis
from typer.testing import CliRunner

from cli.main import app
from histo.data.datasets.base import Problem
from histo.data.images import load_rgb
from histo.data.records import Box, ImageRecord
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig, boxes_for
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import NotFoundError, StoreLockedError
from histo.jobs import (
    BatchResult,
    Completion,
    JobTracker,
    TileBatch,
    list_jobs,
    plan_batches,
    process_batch,
)
from histo.queue_config import worker_args
from histo.settings import RedisSettings, Settings, get_settings
from histo.store import VectorStore, open_store
from tests.helpers import tissue_array, write_image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENCODERS = "colorhist,random"
runner = CliRunner()


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _record(path: Path, root: Path) -> ImageRecord:
    rel = path.relative_to(root).as_posix()
    return ImageRecord(path=path, rel_path=rel, dataset="folder", label="x", split=None, image_id=path.stem)


def _truncated_image(path: Path) -> Path:
    """A file whose header reads fine but whose pixels stop half way (decoding fails in the worker)."""
    buffer = io.BytesIO()
    Image.fromarray(tissue_array(224, 224, seed=7)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _worker_env(home: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update(HISTO_HOME=str(home), HISTO_REDIS__URL=redis_url, PYTHONUNBUFFERED="1", **extra)
    return env


class WorkerProcess:
    """A worker started in its own session, so it (and its pool) can be stopped or killed as a group."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if " ready." in text:
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"worker did not become ready:\n{self.log.read_text(errors='replace')[-4000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM): the running task finishes first."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the whole group: nothing gets acknowledged."""
        self._signal(signal.SIGKILL, 10.0)

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP (or SIGCONT) the whole group: a frozen worker acknowledges nothing meanwhile."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    @contextlib.contextmanager
    def running(self) -> Iterator[WorkerProcess]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def _celery_worker(env: dict[str, str], log: Path, name: str, pool: str = "prefork") -> WorkerProcess:
    argv = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", *worker_args(1, pool=pool)]
    return WorkerProcess([*argv, f"--hostname={name}@%h"], env, log)


def _open_when_free(home: Path, timeout: float = 30.0) -> VectorStore:
    """The embedded index, once no worker holds it (a worker lets go between tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_store(path=home / "index")
        except StoreLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def cli_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """HISTO_HOME and HISTO_REDIS__URL for in-process CLI calls; yields HISTO_HOME."""
    home = tmp_path / "home"
    for name in [n for n in os.environ if n.startswith("HISTO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HISTO_HOME", str(home))
    monkeypatch.setenv("HISTO_REDIS__URL", redis_url)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def _invoke_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ------------------------------------------------------------------------------------------------
# plan_batches, process_batch (no Redis)
# ------------------------------------------------------------------------------------------------


def test_plan_batches_packs_exact_grid_boxes_and_records_unreadable_headers(tmp_path: Path) -> None:
    wide = write_image(tmp_path / "a_wide.png", 500, 300)  # x at 0 and 224, one row: 2 boxes
    small = write_image(tmp_path / "b_small.png", 100, 50)  # smaller than a tile: 1 box, whole image
    square = write_image(tmp_path / "c_square.png", 448, 448)  # 2 x 2: 4 boxes
    broken = tmp_path / "d_broken.png"
    broken.write_bytes(b"not an image at all")
    records = [_record(p, tmp_path) for p in (wide, small, square, broken)]

    plan = plan_batches(records, TilingConfig(tile_size=224), max_pixels=10**8, tiles_per_batch=3)

    t = 224
    laid_out = [[(item.record.path.name, list(item.boxes)) for item in batch.items] for batch in plan]
    assert laid_out == [
        [("a_wide.png", [Box(0, 0, t, t), Box(t, 0, t, t)]), ("b_small.png", [Box(0, 0, 100, 50)])],
        [("c_square.png", [Box(0, 0, t, t), Box(t, 0, t, t), Box(0, t, t, t)])],
        [("c_square.png", [Box(t, t, t, t)])],
    ]
    assert [batch.id for batch in plan] == ["b000000", "b000001", "b000002"]
    assert (plan.images, plan.tiles, len(plan)) == (4, 7, 3)
    assert [p.path for p in plan.failures] == [str(broken)]
    assert "not a recognised image format" in plan.failures[0].reason
    # a batch travels as JSON and comes back equal
    assert [TileBatch.from_dict(json.loads(json.dumps(b.to_dict()))) for b in plan] == plan.batches


def test_plan_uses_the_upright_size_of_exif_rotated_images(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 300 x 500, shown 500 x 300
    Image.fromarray(tissue_array(300, 500)).save(path, exif=exif)
    record = _record(path, tmp_path)
    config = TilingConfig(tile_size=224)
    plan = plan_batches([record], config, max_pixels=10**8)
    assert list(plan.batches[0].items[0].boxes) == boxes_for(load_rgb(path).size, record, config)


def test_process_batch_drops_background_and_records_undecodable_images(tmp_path: Path) -> None:
    from histo.embedding import Embedder
    from histo.encoders.catalog import resolve_encoders
    from histo.ingest import Ingestor

    tissue = write_image(tmp_path / "tissue.png", 224, 224)
    glass = tmp_path / "glass.png"
    Image.new("RGB", (224, 224), (245, 245, 245)).save(glass)
    truncated = _truncated_image(tmp_path / "truncated.png")
    records = [_record(p, tmp_path) for p in (tissue, glass, truncated)]
    config = TilingConfig(tile_size=224)
    (batch,) = plan_batches(records, config, max_pixels=10**8).batches
    embedders = {
        n: Embedder.from_artifact(p) for n, p in resolve_encoders("colorhist", tmp_path / "enc").items()
    }

    with open_store(url=":memory:") as store:
        ingestor = Ingestor(store, embedders)
        first = process_batch(batch, ingestor, config, max_pixels=10**8)
        again = process_batch(batch, ingestor, config, max_pixels=10**8)
        assert store.count() == 1

    assert (first.embedded, first.skipped, first.background) == (1, 0, 1)
    assert [p.path for p in first.failures] == [str(truncated)]
    assert "truncated" in first.failures[0].reason and str(truncated) not in first.failures[0].reason
    assert (again.embedded, again.skipped, again.background) == (0, 1, 1)


# ------------------------------------------------------------------------------------------------
# JobTracker (Redis)
# ------------------------------------------------------------------------------------------------


def test_job_tracker_counts_each_batch_once(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    tracker = JobTracker.create(
        client,
        dataset="bach",
        root="/data/bach",
        encoders=["colorhist"],
        images=3,
        total_tiles=10,
        total_batches=2,
        failures=[Problem("/data/bach/bad.tif", "not a recognised image format")],
    )
    assert tracker.snapshot().state == "queued"
    result = BatchResult(
        embedded=5, skipped=1, background=0, failures=[Problem("/data/bach/cut.tif", "truncated")]
    )

    assert tracker.complete_batch("b000000", 6, result) is Completion.COUNTED
    assert tracker.complete_batch("b000000", 6, result) is Completion.DUPLICATE  # a redelivery
    assert tracker.is_batch_done("b000000") and not tracker.is_batch_done("b000001")
    middle = tracker.snapshot()
    assert (middle.state, middle.done, middle.embedded, middle.skipped, middle.batches_done) == (
        "running",
        6,
        5,
        1,
        1,
    )
    assert middle.failed == 2

    last = BatchResult(embedded=0, skipped=2, background=2)
    assert tracker.complete_batch("b000001", 4, last) is Completion.FINISHED
    assert tracker.complete_batch("b000001", 4, last) is Completion.DUPLICATE
    done = tracker.snapshot()
    assert done.finished and (done.done, done.embedded, done.skipped, done.background) == (10, 5, 3, 2)
    assert [p.path for p in done.failures] == ["/data/bach/bad.tif", "/data/bach/cut.tif"]
    assert done.as_dict() == JobTracker(client, tracker.job_id).snapshot().as_dict()  # frozen once finished

    assert list_jobs(client) == [tracker.job_id]
    with pytest.raises(NotFoundError, match=tracker.job_id):
        JobTracker(client, "no-such-job").snapshot()
    assert JobTracker(client, "no-such-job").complete_batch("b0", 1, last) is Completion.UNKNOWN_JOB


def test_a_job_without_batches_is_finished_at_once(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    tracker = JobTracker.create(
        client, dataset="bach", root="/r", encoders=[], images=1, total_tiles=0, total_batches=0
    )
    assert tracker.snapshot().finished


def test_broker_down_is_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.conftest import free_port

    monkeypatch.setenv("HISTO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HISTO_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["ingest", "--attach", "some-job"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "redis-server not reachable at redis://127.0.0.1:" in result.output
    assert "HISTO_REDIS__URL" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------
# End to end: real workers
# ------------------------------------------------------------------------------------------------


def test_queue_ingest_lands_every_tile_once(tmp_path: Path, redis_url: str, cli_env: Path) -> None:
    home = cli_env
    root = tmp_path / "bach"
    synth = write_synthetic("bach", root, slides=3, tiles_per_slide=4, seed=0)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    unreadable = photos / "Normal" / "n900.tif"
    unreadable.write_bytes(b"this is not an image")  # header unreadable: a failure in the plan
    truncated = _truncated_image(photos / "Benign" / "b900.tif")  # header fine: a failure in the worker
    tiles = synth.tiles
    worker = _celery_worker(_worker_env(home, redis_url), tmp_path / "worker.log", "e2e")

    with worker.running():
        first = _invoke_json(
            "ingest", str(root), "-d", "bach", "-e", ENCODERS, "--queue", "--batch-size", "4"
        )
        assert first["state"] == "finished"
        assert (first["images"], first["tiles"], first["done"]) == (synth.images + 2, tiles + 1, tiles + 1)
        assert (first["embedded"], first["skipped"], first["background"], first["failed"]) == (tiles, 0, 0, 2)
        assert sorted(f["path"] for f in first["failures"]) == sorted([str(truncated), str(unreadable)])

        rerun = _invoke_json(
            "ingest", str(root), "-d", "bach", "-e", ENCODERS, "--queue", "--batch-size", "4"
        )
        assert (rerun["embedded"], rerun["skipped"], rerun["failed"]) == (0, tiles, 2)

        assert _invoke_json("ingest", "--attach", first["job_id"]) == first
        text = runner.invoke(app, ["ingest", "--attach", first["job_id"]])
        assert text.exit_code == 0, text.output
        squeezed = "".join(text.stdout.split())  # rich wraps long paths at the terminal width
        assert f"{tiles}embedded,0skipped" in squeezed and "2failed" in squeezed
        assert f"failed:{unreadable}:" in squeezed and "ingest-bach-failures.tsv" in squeezed
        lines = (home / "logs" / "ingest-bach-failures.tsv").read_text().splitlines()
        assert sorted(line.split("\t")[0] for line in lines) == sorted([str(truncated), str(unreadable)])

    with _open_when_free(home) as store:
        stats = store.stats()
    assert stats["points"] == tiles
    assert {name: v["points"] for name, v in stats["vectors"].items()} == {
        "colorhist": tiles,
        "random": tiles,
    }


def test_a_killed_workers_batch_is_redelivered_and_counted_once(tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "home"
    root = tmp_path / "bach"
    tiles = write_synthetic("bach", root, slides=2, tiles_per_slide=4, seed=1).tiles
    env = _worker_env(home, redis_url, HISTO_REDIS__VISIBILITY_TIMEOUT="8")
    client = Redis.from_url(redis_url, decode_responses=True)
    doomed = WorkerProcess(
        [str(BIN / "histocli"), "worker", "--pool", "solo", "--loglevel", "INFO"],
        env,
        tmp_path / "doomed.log",
    ).start()
    command = ["ingest", str(root), "-d", "bach", "-e", ENCODERS, "--queue", "--batch-size", "2", "--json"]
    ingest = subprocess.Popen(
        [str(BIN / "histocli"), *command],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    rescuer = WorkerProcess(
        [sys.executable, "-m", "workers", "--pool", "solo", "--loglevel", "INFO"],
        env,
        tmp_path / "rescuer.log",
    )
    try:
        deadline = time.monotonic() + 90
        while not list_jobs(client):
            assert time.monotonic() < deadline and ingest.poll() is None, ingest.communicate()
            time.sleep(0.05)
        tracker = JobTracker(client, list_jobs(client)[0])
        # kill while a batch is taken but not acknowledged (kombu keeps it in the "unacked" hash);
        # the worker is frozen before the check, so it cannot acknowledge the batch in between
        while True:
            assert time.monotonic() < deadline, doomed.log.read_text()
            if tracker.snapshot().batches_done >= 1 and client.hlen("unacked") >= 1:
                doomed.freeze(True)
                if client.hlen("unacked") >= 1 and not tracker.snapshot().finished:
                    break
                doomed.freeze(False)
            time.sleep(0.02)
        doomed.kill()
        assert client.hlen("unacked") >= 1 and not tracker.snapshot().finished

        rescuer.start()
        out, err = ingest.communicate(timeout=120)
    finally:
        doomed.kill()
        rescuer.stop()
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()
    assert ingest.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["state"] == "finished" and summary["batches_done"] == summary["batches"]
    assert (summary["tiles"], summary["done"], summary["failed"]) == (tiles, tiles, 0)
    # tiles the killed worker wrote before dying come back as "skipped" on redelivery; none twice
    assert summary["embedded"] + summary["skipped"] + summary["background"] == tiles
    with _open_when_free(home) as store:
        stats = store.stats()
    assert stats["points"] == tiles
    assert {name: v["points"] for name, v in stats["vectors"].items()} == {
        "colorhist": tiles,
        "random": tiles,
    }


# ------------------------------------------------------------------------------------------------
# The task and the follower, in this process
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def task_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``workers.tasks`` run eagerly in this process, on a temporary HISTO_HOME and the test Redis."""
    from workers import tasks

    monkeypatch.setattr(
        tasks, "settings", Settings(home=tmp_path / "home", redis=RedisSettings(url=redis_url))
    )
    monkeypatch.setattr(tasks, "_redis", None)
    monkeypatch.setattr(tasks, "_embedders", {})
    monkeypatch.setattr(tasks, "LOCK_WAIT_S", 0.05)
    monkeypatch.setattr(tasks.embed_batch, "max_retries", 2)
    monkeypatch.setattr(tasks.embed_batch, "store_errors_even_if_ignored", False)  # no result backend here
    yield tasks


def _one_batch_job(tmp_path: Path, redis_url: str) -> tuple[JobTracker, TileBatch, list[Any]]:
    image = write_image(tmp_path / "data" / "x" / "a.png", 224, 224)
    config = TilingConfig(tile_size=224)
    (batch,) = plan_batches([_record(image, tmp_path / "data")], config, max_pixels=10**8).batches
    client = Redis.from_url(redis_url, decode_responses=True)
    tracker = JobTracker.create(
        client, dataset="folder", root="r", encoders=["colorhist"], images=1, total_tiles=1, total_batches=1
    )
    return tracker, batch, [tracker.job_id, batch.to_dict(), ["colorhist"], dataclasses.asdict(config), 10**8]


def test_a_batch_whose_index_stays_locked_fails_after_its_retries(
    tmp_path: Path, redis_url: str, task_env: Any
) -> None:
    tracker, batch, args = _one_batch_job(tmp_path, redis_url)
    index = tmp_path / "home" / "index"

    with open_store(path=index):  # another owner holds the embedded index throughout
        outcome = task_env.embed_batch.apply(args=args)  # eager: retries run at once, without countdown

    assert outcome.state == "FAILURE" and isinstance(outcome.result, StoreLockedError)
    job = tracker.snapshot()
    assert job.finished and job.done == 1 and [p.path for p in job.failures] == batch.paths
    assert (
        "store unavailable after 2 retries" in job.failures[0].reason and str(index) in job.failures[0].reason
    )
    # the batch is settled: a late redelivery changes nothing
    assert task_env.embed_batch.apply(args=args).result == {"batch": batch.id, "outcome": "duplicate"}


def test_a_batch_that_keeps_killing_its_worker_is_given_up(
    tmp_path: Path, redis_url: str, task_env: Any
) -> None:
    tracker, batch, args = _one_batch_job(tmp_path, redis_url)
    assert [tracker.begin_attempt(batch.id) for _ in range(3)] == [0, 1, 2]  # three workers died in it

    outcome = task_env.embed_batch.apply(args=args)

    assert outcome.result["outcome"] == "failed" and "died 3 times" in outcome.result["reason"]
    job = tracker.snapshot()
    assert job.finished and "died 3 times" in job.failures[0].reason
    assert tracker.begin_attempt(batch.id) == 0  # an attempt that ends is forgotten


def test_a_task_embeds_and_counts_its_batch(tmp_path: Path, redis_url: str, task_env: Any) -> None:
    tracker, batch, args = _one_batch_job(tmp_path, redis_url)
    result = task_env.embed_batch.apply(args=args).result
    assert result == {
        "batch": batch.id,
        "outcome": "finished",
        "embedded": 1,
        "skipped": 0,
        "background": 0,
        "failed": 0,
    }
    assert tracker.snapshot().embedded == 1 and tracker.begin_attempt(batch.id) == 0
    with open_store(path=tmp_path / "home" / "index") as store:  # the task let the index go
        assert store.count() == 1


def test_ctrl_c_detaches_and_says_how_to_reattach(
    redis_url: str, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    tracker = JobTracker.create(
        client, dataset="bach", root="r", encoders=["colorhist"], images=1, total_tiles=4, total_batches=1
    )

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cli.ingest_queue.time.sleep", interrupt)
    result = runner.invoke(app, ["ingest", "--attach", tracker.job_id])
    assert result.exit_code == 130
    assert f"histocli ingest --attach {tracker.job_id}" in " ".join(result.output.split())
    assert tracker.snapshot().state == "queued"  # detaching cancels nothing


def test_queue_ingest_of_whole_slide_images(tmp_path: Path, redis_url: str, cli_env: Path) -> None:
    """Slides travel as (slide, boxes) batches; workers read the tiles from the pyramid; the CLI
    then chooses the mosaics; the points are those in-process ingestion makes."""
    from histo.data.synth_slides import write_synthetic_slides
    from histo.store import SearchFilter

    home = cli_env
    root = tmp_path / "wsi"
    write_synthetic_slides("bach", root, slides_per_class=1, seed=4, size=(1536, 2048))
    (root / "broken.svs").write_bytes(b"not a slide")
    with (root / "slides.csv").open("a") as table:
        table.write("broken.svs,Normal,broken,,\n")
    worker = _celery_worker(_worker_env(home, redis_url), tmp_path / "worker.log", "wsi")
    with worker.running():
        job = _invoke_json(
            "ingest", str(root), "-d", "slides", "-e", "colorhist", "--queue", "--batch-size", "8"
        )
    assert job["state"] == "finished" and job["failed"] == 1 and job["embedded"] > 0
    assert "not a slide format" in job["failures"][0]["reason"]
    mosaics = runner.invoke(app, ["index", "mosaics", "-d", "slides", "-e", "colorhist"])
    assert mosaics.exit_code == 0 and "4 slides of slides" in mosaics.output, mosaics.output
    with _open_when_free(home) as store:
        queued = {r.id for r in store.scroll(SearchFilter(dataset="slides"))}
        assert store.count(SearchFilter(dataset="slides", mosaic_only=True)) == len(
            queued
        )  # small slides: all
    in_process = _invoke_json("ingest", str(root), "-d", "slides", "-e", "colorhist")
    assert (in_process["embedded"], in_process["skipped"], in_process["slides"]) == (0, len(queued), 4)


def test_a_worker_with_another_artifact_fails_the_batch_and_writes_nothing(
    tmp_path: Path, redis_url: str, task_env: Any
) -> None:
    """The job carries the digests of the artifacts it was queued with; a worker whose colorhist
    is another model records the batch as failed, naming both digests, and writes no point."""
    tracker, _, args = _one_batch_job(tmp_path, redis_url)
    make_baseline_artifact("colorhist", tmp_path / "home" / "encoders" / "colorhist", input_size=96)
    outcome = task_env.embed_batch.apply(args=args, kwargs={"digests": {"colorhist": "0123456789abcdef"}})
    assert outcome.result["outcome"] == "failed"
    reason = tracker.snapshot().failures[0].reason
    assert "is not the one the job was queued with (digest 0123456789abcdef)" in reason
    assert not (tmp_path / "home" / "index").exists()  # nothing written
