"""Metrics and logs, for real: Prometheus text scraped over loopback HTTP and parsed with
prometheus-client's own parser, after a known number of calls.

* The gRPC search service (in-process ``create_server``, and ``python -m services.search`` once,
  with JSON logs): calls per method and status code, latency counts, embedding times, and the
  index's points per data set and encoder against the store's own counts.
* The page: requests per route template, method and status; ``/metrics`` on its own port.
* A Celery worker (prefork, a real redis-server): tasks per end state and their durations from
  the pool's child process, JSON logs carrying each task's request id; a taken metrics port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from celery import Celery
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis import Redis

from benchmarks.processes import free_port
from histo.data.records import ImageRecord
from histo.data.tiling import TilingConfig
from histo.jobs import JobTracker, plan_batches
from histo.prometheus import IndexCollector, MeteredEngine, embed_histogram, new_registry, serve_metrics
from histo.queue_config import DEFAULT_QUEUE, EMBED_BATCH_TASK, celery_config, worker_args
from histo.rpc.v1 import search_pb2, search_pb2_grpc
from histo.search import SearchEngine
from histo.settings import GrpcSettings
from histo.store import EdgeStore, SearchFilter
from services.search.server import create_server
from services.web.app import create_app
from services.web.server import WebServer
from tests.helpers import tissue_array, write_image
from tests.search_home import TILE, png

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVICE = "histo.rpc.v1.SearchService"
HEALTH = "grpc.health.v1.Health"
MISSING_ID = "00000000-0000-4000-8000-000000000000"


# ------------------------------------------------------------------------------------------------
# Scraping
# ------------------------------------------------------------------------------------------------


def scrape(url: str) -> list[Sample]:
    """Every sample of the Prometheus text at ``url``, parsed by prometheus-client."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def by_label(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in samples if s.name == name}


# ------------------------------------------------------------------------------------------------
# The gRPC search service
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    stub: search_pb2_grpc.SearchServiceStub
    target: str
    metrics_url: str


@pytest.fixture(scope="module")
def observed(store: EdgeStore, homes: tuple[Path, Path]) -> Iterator[Observed]:
    """A search server over a metered engine, with the index's gauges, its metrics on port 0."""
    registry = new_registry()
    registry.register(IndexCollector(store))
    engine = MeteredEngine.load(
        store,
        homes[0] / "encoders",
        tiling=TilingConfig(tile_size=TILE),
        embed_seconds=embed_histogram(registry),
    )
    server, port = create_server(
        GrpcSettings(host="127.0.0.1", port=0), engine, max_workers=4, registry=registry
    )
    server.start()
    http = serve_metrics(registry, "127.0.0.1", 0, "HISTO_METRICS__SEARCH_PORT")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        yield Observed(stub, f"127.0.0.1:{port}", f"http://127.0.0.1:{http.server_port}/metrics")
    finally:
        channel.close()
        http.shutdown()
        server.stop(None).wait()
        engine.close()


def test_the_search_service_counts_each_call_by_method_and_status(
    observed: Observed, store: EdgeStore
) -> None:
    stub = observed.stub
    query = search_pb2.SearchRequest(
        image=png(tissue_array(TILE, TILE, seed=3)), encoder="colorhist", top_k=3
    )
    for _ in range(3):
        stub.GetIndexStats(search_pb2.GetIndexStatsRequest())
    for _ in range(2):
        assert stub.Search(query).hits
    some_id = next(iter(store.scroll())).id
    with pytest.raises(grpc.RpcError) as refused:
        stub.Search(search_pb2.SearchRequest(point_id=some_id, encoder="no-such-encoder"))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    samples = scrape(observed.metrics_url)

    handled = "grpc_server_handled_total"
    ours = [s for s in samples if s.labels.get("grpc_service") == SERVICE]
    calls = {(s.labels["grpc_method"], s.labels["grpc_code"]): s.value for s in ours if s.name == handled}
    assert calls == {("GetIndexStats", "OK"): 3, ("Search", "OK"): 2, ("Search", "INVALID_ARGUMENT"): 1}
    assert value(ours, handled, grpc_type="unary") == 6
    latency = "grpc_server_handling_seconds_count"
    assert by_label(ours, latency, "grpc_method") == {"GetIndexStats": 3, "Search": 3}
    assert value(samples, "grpc_server_handling_seconds_bucket", grpc_method="Search", le="+Inf") == 3
    # two uploads, each embedded once by colorhist; the failed call embedded nothing
    assert by_label(samples, "histo_embed_seconds_count", "encoder") == {"colorhist": 2}
    assert value(samples, "histo_embed_seconds_sum", encoder="colorhist") > 0
    assert value(samples, "process_resident_memory_bytes") > 0


def test_the_index_gauges_equal_the_stores_counts(observed: Observed, store: EdgeStore) -> None:
    samples = scrape(observed.metrics_url)
    figures = store.stats()

    assert value(samples, "histo_index_points") == figures["points"] == store.count() > 0
    datasets = by_label(samples, "histo_index_dataset_points", "dataset")
    assert datasets == figures["datasets"] and set(datasets) == {"bach", "bracs"}
    assert all(datasets[d] == store.count(SearchFilter(dataset=d)) for d in datasets)
    encoders = by_label(samples, "histo_index_encoder_points", "encoder")
    assert encoders == {name: v["points"] for name, v in figures["vectors"].items()}
    assert set(encoders) == {"colorhist", "random"}


def test_health_checks_are_counted_and_watch_still_streams(observed: Observed) -> None:
    with grpc.insecure_channel(observed.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(2):
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    samples = scrape(observed.metrics_url)
    checks = [
        s for s in samples if s.name == "grpc_server_handled_total" and s.labels["grpc_service"] == HEALTH
    ]
    assert [(s.labels["grpc_method"], s.labels["grpc_code"], s.value) for s in checks] == [("Check", "OK", 2)]


def test_a_call_gets_back_the_request_id_it_sent_or_a_new_one(observed: Observed) -> None:
    request = search_pb2.GetIndexStatsRequest()
    _, call = observed.stub.GetIndexStats.with_call(request, metadata=(("x-request-id", "trace-42"),))
    assert dict(call.initial_metadata())["x-request-id"] == "trace-42"
    _, bare = observed.stub.GetIndexStats.with_call(request)
    odd = [
        observed.stub.GetIndexStats.with_call(request, metadata=(("x-request-id", rid),))[1]
        for rid in ("two words", "x" * 200)  # a forged log field, a flood: replaced
    ]
    fresh = {dict(c.initial_metadata())["x-request-id"] for c in (bare, *odd)}
    assert len(fresh) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in fresh)


def test_calls_refused_for_a_missing_token_are_counted_unauthenticated(engine: SearchEngine) -> None:
    registry = CollectorRegistry()
    server, port = create_server(
        GrpcSettings(host="127.0.0.1", port=0, token="tok"), engine, max_workers=2, registry=registry
    )
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as refused:
            search_pb2_grpc.SearchServiceStub(channel).ListEncoders(search_pb2.ListEncodersRequest())
    finally:
        server.stop(None).wait()
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    labels = {"grpc_method": "ListEncoders", "grpc_code": "UNAUTHENTICATED"}
    assert (
        registry.get_sample_value(
            "grpc_server_handled_total", {"grpc_type": "unary", "grpc_service": SERVICE, **labels}
        )
        == 1
    )


def _read_until(stream: Any, pattern: str, timeout: float = 120.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def test_json_logs_of_a_call_carry_the_request_id_the_client_sent(homes: tuple[Path, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update(
        HISTO_HOME=str(homes[1]),
        HISTO_TILING__TILE_SIZE=str(TILE),
        HISTO_LOG__FORMAT="json",
        HISTO_METRICS__SEARCH_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    argv = [sys.executable, "-m", "services.search", "--port", "0", "--torch-threads", "1", "--grace", "1"]
    process = subprocess.Popen(
        [*argv, "--log-level", "DEBUG"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = _read_until(process.stdout, r"listening on (\S+) ").group(1)
        metrics_url = _read_until(process.stdout, r"metrics on (\S+)").group(1)
        _read_until(process.stdout, r"^serving ")
        with grpc.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            query = search_pb2.SearchRequest(image=png(tissue_array(TILE, TILE, seed=5)), top_k=2)
            _, call = stub.Search.with_call(query, metadata=(("x-request-id", "client-rid-7"),))
        assert dict(call.initial_metadata())["x-request-id"] == "client-rid-7"
        samples = scrape(metrics_url)
        assert value(samples, "grpc_server_handled_total", grpc_method="Search", grpc_code="OK") == 1
        assert value(samples, "histo_embed_seconds_count") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors[-3000:]

    lines = [json.loads(line) for line in errors.splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    tagged = [line for line in lines if "request_id" in line]
    assert {line["request_id"] for line in tagged} == {"client-rid-7"}
    assert any(f"/{SERVICE}/Search OK" in line["message"] for line in tagged)
    assert len(tagged) >= 2, tagged  # the call's own lines (the upload's decoding), not only the access line
    assert any(line["message"].startswith("SIGTERM: stopping") for line in lines)


def test_a_taken_metrics_port_stops_the_search_service_with_one_line(homes: tuple[Path, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.update(HISTO_HOME=str(homes[1]), HISTO_METRICS__SEARCH_PORT=str(port))
        run = subprocess.run(
            [sys.executable, "-m", "services.search", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 1 and run.stdout == ""  # nothing was listening yet
    assert run.stderr == (
        f"error: cannot serve metrics on 127.0.0.1:{port} (Address already in use); choose another port "
        "with HISTO_METRICS__SEARCH_PORT, or 0 to turn the metrics off\n"
    )


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------


def test_the_page_counts_requests_by_route_method_and_status(engine: SearchEngine) -> None:
    server = WebServer(create_app(engine)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as web:
            assert [web.get("/api/stats").status_code for _ in range(2)] == [200, 200]
            assert web.get(f"/api/tiles/{MISSING_ID}").status_code == 404
            assert web.get("/no/such/page").status_code == 404
            assert web.post("/api/search", json={"top_k": 0}).status_code == 422
            health = web.get("/api/health", headers={"X-Request-Id": "page-rid-1"})
            assert health.headers["x-request-id"] == "page-rid-1"
            assert re.fullmatch(r"[0-9a-f]{32}", web.get("/api/health").headers["x-request-id"])
            page = web.get("/metrics")
    finally:
        server.stop()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    samples = [s for f in text_string_to_metric_families(page.text) for s in f.samples]

    counted = {
        (s.labels["method"], s.labels["handler"], s.labels["status"]): s.value
        for s in samples
        if s.name == "http_requests_total"
    }
    assert counted == {
        ("GET", "/api/stats", "200"): 2,
        ("GET", "/api/tiles/{point_id}", "404"): 1,
        ("GET", "unmatched", "404"): 1,
        ("POST", "/api/search", "422"): 1,
        ("GET", "/api/health", "200"): 2,
    }  # and /metrics itself is not counted
    durations = by_label(samples, "http_request_duration_seconds_count", "handler")
    assert durations == {
        "/api/stats": 2,
        "/api/tiles/{point_id}": 1,
        "unmatched": 1,
        "/api/search": 1,
        "/api/health": 2,
    }


# ------------------------------------------------------------------------------------------------
# A Celery worker
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_worker(
    env: dict[str, str], log: Path, timeout: float = 90.0
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A workers.celery_app worker`` (prefork, one child) until it says it is ready."""
    argv = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", *worker_args(1)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while " ready." not in log.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[
                -3000:
            ]
            time.sleep(0.1)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _worker_env(home: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update(HISTO_HOME=str(home), HISTO_REDIS__URL=redis_url, PYTHONUNBUFFERED="1", **extra)
    return env


def _wait_for(condition: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_worker_counts_tasks_by_state_and_logs_json_with_request_ids(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port()
    env = _worker_env(
        tmp_path / "home", redis_url, HISTO_METRICS__WORKER_PORT=str(port), HISTO_LOG__FORMAT="json"
    )
    image = write_image(tmp_path / "data" / "a.png", 224, 224)
    record = ImageRecord(path=image, rel_path="a.png", dataset="folder", label="x", split=None, image_id="a")
    config = TilingConfig(tile_size=224)
    (batch,) = plan_batches([record], config, max_pixels=10**8).batches
    tracker = JobTracker.create(
        Redis.from_url(redis_url, decode_responses=True),
        dataset="folder",
        root=str(tmp_path / "data"),
        encoders=["colorhist"],
        images=1,
        total_tiles=1,
        total_batches=1,
    )
    producer = Celery("test", set_as_current=False)
    producer.conf.update(celery_config(redis_url))
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    log = tmp_path / "worker.log"
    folders_before = set(Path(tempfile.gettempdir()).glob("histo-worker-metrics-*"))

    with running_worker(env, log):
        args = [tracker.job_id, batch.to_dict(), ["colorhist"], dataclasses.asdict(config), 10**8]
        producer.send_task(
            EMBED_BATCH_TASK, args=args, queue=DEFAULT_QUEUE, headers={"x-request-id": "batch-rid-1"}
        )
        broken = producer.send_task(EMBED_BATCH_TASK, args=["too", "few"], queue=DEFAULT_QUEUE)  # TypeError
        _wait_for(lambda: tracker.snapshot().finished)
        _wait_for(lambda: value(scrape(metrics_url), "histo_worker_tasks_total") == 2)
        samples = scrape(metrics_url)

    assert tracker.snapshot().embedded == 1
    states = by_label(samples, "histo_worker_tasks_total", "state")
    assert states == {"succeeded": 1, "failed": 1}
    assert {s.labels["task"] for s in samples if s.name == "histo_worker_tasks_total"} == {EMBED_BATCH_TASK}
    assert value(samples, "histo_worker_task_duration_seconds_count", task=EMBED_BATCH_TASK) == 2
    assert value(samples, "histo_worker_task_duration_seconds_bucket", le="+Inf") == 2

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["message"].endswith(" ready.") for line in lines)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_id.setdefault(line.get("request_id", ""), []).append(line)
    assert any("succeeded in" in line["message"] for line in by_id["batch-rid-1"])
    failed = by_id[broken.id]  # no header: the task id is the request id
    assert any(line["level"] == "ERROR" and "TypeError" in line.get("exception", "") for line in failed)
    assert set(by_id) == {"", "batch-rid-1", broken.id}
    # the pool's metric files went with the worker
    assert set(Path(tempfile.gettempdir()).glob("histo-worker-metrics-*")) == folders_before


def test_a_worker_whose_metrics_port_is_taken_stops_with_one_line(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _worker_env(tmp_path / "home", redis_url, HISTO_METRICS__WORKER_PORT=str(port))
        run = subprocess.run(
            [str(BIN / "celery"), "-A", "workers.celery_app", "worker", *worker_args(1)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot serve metrics on 127.0.0.1:{port} (Address already in use); choose another port "
        "with HISTO_METRICS__WORKER_PORT, or 0 to turn the metrics off"
    ]
    assert "Traceback" not in run.stderr
