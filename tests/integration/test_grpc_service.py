"""The gRPC search service for real: servers on port 0 on the loopback interface, real channels.

A real index (synthetic BACH and BRACS, ingested with two encoders that need no training:
colorhist and random) is served in-process by ``create_server``; ``histocli serve`` runs once as
a subprocess on a copy of it. Covered: every RPC, every filter, grouping, congruence (gRPC hits
equal in-process hits for the same query), every error code of the table, health (with lazy
loading), reflection, token on and off, TLS, and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from histo.client import AuthenticationError, SearchClient, ServiceError, ServiceUnavailableError
from histo.errors import (
    HistoError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidInputError,
    NoMatchError,
    NotFoundError,
    StoreUnavailableError,
    UnknownNameError,
)
from histo.rpc.v1 import search_pb2, search_pb2_grpc
from histo.search import Feedback, SearchEngine, SearchResult
from histo.settings import GrpcSettings
from histo.store import EdgeStore, SearchFilter
from services.search.server import SearchServer, create_server
from tests.helpers import tissue_array
from tests.search_home import TILE, png

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SERVICE = "histo.rpc.v1.SearchService"
TOKEN = "s3cret-token-for-tests"


# ------------------------------------------------------------------------------------------------
# A real index, an engine and servers
# ------------------------------------------------------------------------------------------------


def start(engine: Any, **cfg: Any) -> tuple[SearchServer, int]:
    server, port = create_server(GrpcSettings(host="127.0.0.1", port=0, **cfg), engine, max_workers=4)
    server.start()
    return server, port


@pytest.fixture(scope="module")
def server(engine: SearchEngine) -> Iterator[tuple[SearchServer, int]]:
    served = start(engine)
    yield served
    served[0].stop(None).wait()


@pytest.fixture(scope="module")
def client(server: tuple[SearchServer, int]) -> Iterator[SearchClient]:
    with SearchClient(f"127.0.0.1:{server[1]}", timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def token_server(engine: SearchEngine) -> Iterator[int]:
    server, port = start(engine, token=TOKEN)
    yield port
    server.stop(None).wait()


@pytest.fixture(scope="module")
def records(store: EdgeStore) -> list[Any]:
    return list(store.scroll())


def bach_image(homes: tuple[Path, Path]) -> bytes:
    path = next((homes[0] / "data" / "bach").rglob("*.tif"))
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------
# Every RPC, every filter, congruence
# ------------------------------------------------------------------------------------------------


def test_list_encoders_and_index_stats(client: SearchClient, engine: SearchEngine, store: EdgeStore) -> None:
    infos = client.list_encoders()
    assert infos == engine.list_encoders()
    assert [(i.name, i.dim, i.is_default) for i in infos] == [
        ("colorhist", 512, False),
        ("random", 512, True),
    ]
    total = store.count()
    assert all(i.points == total for i in infos) and total > 30
    assert {i.name: i.architecture for i in infos} == {"colorhist": "colorhist", "random": "resnet18"}
    stats = client.stats()
    assert stats == engine.stats()
    assert stats.points == total and set(stats.datasets) == {"bach", "bracs"}
    assert stats.encoders == ["colorhist", "random"] and set(stats.labels["bach"]) == {
        "Normal",
        "Benign",
        "InSitu",
        "Invasive",
    }


def queries(homes: tuple[Path, Path], records: list[Any]) -> list[dict[str, Any]]:
    bracs = next(r for r in records if r.payload["dataset"] == "bracs")
    bach = next(r for r in records if r.payload["dataset"] == "bach")
    others = [
        r
        for r in records
        if r.payload["image_id"] not in (bach.payload["image_id"], bracs.payload["image_id"])
    ]
    vector = np.random.default_rng(0).random(512).tolist()
    return [
        {"image": bach_image(homes)},
        {"image": bach_image(homes), "encoder": "colorhist", "per_image": 1},
        {"point_id": bach.id},
        {"point_id": bach.id, "include_same_image": True, "encoder": "colorhist"},
        {"point_id": bracs.id, "per_image": 1, "top_k": 5},
        {"vector": vector, "encoder": "colorhist", "top_k": 20},
        {"point_id": bach.id, "filter": SearchFilter(dataset="bracs")},
        {"point_id": bach.id, "filter": SearchFilter(labels=("Benign", "IC"))},
        {"point_id": bach.id, "filter": SearchFilter(split="test")},
        {"point_id": bach.id, "filter": SearchFilter(exclude_image_ids=(bracs.payload["image_id"],))},
        {"point_id": bracs.id, "filter": SearchFilter(exclude_slide_ids=(bracs.payload["slide_id"],))},
        {"point_id": bracs.id, "filter": SearchFilter(exclude_patient_ids=(bracs.payload["patient_id"],))},
        {"image": bach_image(homes), "filter": SearchFilter(dataset="bach", labels=("Normal",))},
        # beyond one vector: fusion, feedback, diversity
        {"image": bach_image(homes), "encoders": ["colorhist", "random"]},
        {"point_id": bach.id, "encoders": ["random", "colorhist"], "fusion": "dbsf", "per_image": 1},
        {"point_id": bach.id, "feedback": Feedback(like=(bracs.id,), unlike=(others[0].id,))},
        {
            "feedback": Feedback(like=(bach.id, bracs.id), strategy="best_score"),
            "encoders": ["colorhist", "random"],
        },
        {"image": bach_image(homes), "feedback": Feedback(unlike=(others[1].id,), strategy="sum_scores")},
        {"point_id": bach.id, "encoder": "colorhist", "diversity": 0.7},
    ]


def test_grpc_hits_equal_in_process_hits(
    client: SearchClient, engine: SearchEngine, homes: tuple[Path, Path], records: list[Any]
) -> None:
    for query in queries(homes, records):
        kwargs = {"top_k": 10, **query, "exact": True}
        remote, local = client.search(**kwargs), engine.search(**kwargs)
        assert remote.hits == local.hits, sorted(query)
        assert (remote.encoder, remote.query_boxes) == (local.encoder, local.query_boxes)
        assert (remote.encoders, remote.fusion) == (local.encoders, local.fusion)
        assert remote.query_image == local.query_image
        assert all(h.found_by for h in remote.hits)
        assert remote.took_ms > 0


def test_every_filter_holds_over_grpc(client: SearchClient, records: list[Any]) -> None:
    bracs = next(r for r in records if r.payload["dataset"] == "bracs")
    p = bracs.payload
    cases: list[tuple[SearchFilter, Any]] = [
        (SearchFilter(dataset="bracs"), lambda q: q["dataset"] == "bracs"),
        (SearchFilter(labels=("Benign", "IC")), lambda q: q["label"] in ("Benign", "IC")),
        (SearchFilter(split="test"), lambda q: q.get("split") == "test"),
        (SearchFilter(exclude_image_ids=(p["image_id"],)), lambda q: q["image_id"] != p["image_id"]),
        (SearchFilter(exclude_slide_ids=(p["slide_id"],)), lambda q: q.get("slide_id") != p["slide_id"]),
        (
            SearchFilter(exclude_patient_ids=(p["patient_id"],)),
            lambda q: q.get("patient_id") != p["patient_id"],
        ),
        (
            SearchFilter(dataset="bracs", labels=("N", "IC", "DCIS"), split="train"),
            lambda q: q["label"] in ("N", "IC", "DCIS") and q["split"] == "train",
        ),
    ]
    vector = np.ones(512)
    for flt, keep in cases:
        result = client.search(vector=vector, encoder="colorhist", top_k=100, filter=flt)
        expected = [r for r in records if flt.dataset in (None, r.payload["dataset"]) and keep(r.payload)]
        assert len(result.hits) == len(expected) > 0, flt
        assert all(keep(h.payload) for h in result.hits), flt
    with pytest.raises(NoMatchError) as nowhere:  # an empty answer says why, as in-process
        client.search(vector=vector, filter=SearchFilter(dataset="nowhere"), encoder="colorhist")
    assert nowhere.value.grpc_code == "NOT_FOUND"  # type: ignore[attr-defined]
    assert "no data set 'nowhere' in the index; it holds: bach (24), bracs (21)" in str(nowhere.value)


def test_image_query_tiles_and_grouping_over_grpc(client: SearchClient, homes: tuple[Path, Path]) -> None:
    result = client.search(image=bach_image(homes), top_k=12)
    assert len(result.query_boxes) == 2 and {h.query_tile for h in result.hits} <= {0, 1}
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-4)  # the image is in the index
    grouped = client.search(image=bach_image(homes), top_k=12, per_image=1)
    images = [h.payload["image_id"] for h in grouped.hits]
    assert len(images) == len(set(images)) == 12
    path = next((homes[0] / "data" / "bach").rglob("*.tif"))
    assert client.search(image=path, top_k=3).hits == client.search(image=path.read_bytes(), top_k=3).hits


# ------------------------------------------------------------------------------------------------
# Errors: the one table, on the wire
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "code", "message"),
    [
        (
            {"vector": [1.0] * 512, "encoder": "nnclr"},
            UnknownNameError,
            "INVALID_ARGUMENT",
            "colorhist, random",
        ),
        (
            {"image": b"definitely not an image"},
            ImageDecodeError,
            "INVALID_ARGUMENT",
            "not a recognised image",
        ),
        ({"image": b""}, ImageDecodeError, "INVALID_ARGUMENT", "empty upload"),
        ({"vector": [1.0] * 3}, InvalidInputError, "INVALID_ARGUMENT", "shape"),
        ({"point_id": "not-a-uuid"}, InvalidInputError, "INVALID_ARGUMENT", "not a UUID"),
        (
            {"point_id": "00000000-0000-4000-8000-000000000000"},
            NotFoundError,
            "NOT_FOUND",
            "not in the index",
        ),
        ({}, InvalidInputError, "INVALID_ARGUMENT", "exactly one query"),
        (
            {"feedback": Feedback(unlike=("00000000-0000-4000-8000-000000000000",))},
            InvalidInputError,
            "INVALID_ARGUMENT",
            "exactly one query",
        ),
        (
            {"feedback": Feedback(like=("00000000-0000-4000-8000-000000000000",))},
            NotFoundError,
            "NOT_FOUND",
            "example point",
        ),
        (
            {
                "vector": [1.0] * 512,
                "feedback": Feedback(like=tuple(f"{k:08x}-0000-4000-8000-000000000000" for k in range(65))),
            },
            InvalidInputError,
            "INVALID_ARGUMENT",
            "at most 64",
        ),
        (
            {"vector": [1.0] * 512, "encoders": ["colorhist", "nnclr"]},
            UnknownNameError,
            "INVALID_ARGUMENT",
            "nnclr",
        ),
        (
            {"vector": [1.0] * 512, "encoders": ["colorhist", "random"]},
            InvalidInputError,
            "INVALID_ARGUMENT",
            "raw vector",
        ),
        ({"vector": [1.0] * 512, "diversity": 2.0}, InvalidInputError, "INVALID_ARGUMENT", "diversity"),
        (
            {"vector": [1.0] * 512, "encoder": "random", "encoders": ["colorhist", "random"]},
            InvalidInputError,
            "INVALID_ARGUMENT",
            "not both",
        ),
    ],
)
def test_error_codes(
    client: SearchClient, kwargs: dict[str, Any], error: type[Exception], code: str, message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        client.search(**kwargs)
    assert type(caught.value) is error and caught.value.grpc_code == code  # type: ignore[attr-defined]


def raw_call(port: int, request: search_pb2.SearchRequest, **kw: Any) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError) as caught:
        search_pb2_grpc.SearchServiceStub(ch).Search(request, timeout=60, **kw)
    return caught.value  # type: ignore[return-value]


def test_raw_status_codes_and_error_trailer(server: tuple[SearchServer, int]) -> None:
    error = raw_call(server[1], search_pb2.SearchRequest(vector=search_pb2.Vector(values=[1.0]), encoder="x"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "choose one of: colorhist, random" in error.details()  # type: ignore[attr-defined]
    assert ("histo-error", "UnknownNameError") in tuple(error.trailing_metadata())  # type: ignore[attr-defined]
    error = raw_call(
        server[1], search_pb2.SearchRequest(point_id="00000000-0000-4000-8000-000000000000", top_k=1001)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in error.details()  # type: ignore[attr-defined]


def test_size_limits_are_resource_exhausted(store: EdgeStore, engine: SearchEngine) -> None:
    small = SearchEngine(
        store,
        {"colorhist": engine.embedder("colorhist")},
        tiling=engine.tiling,
        max_pixels=5000,
        warm_up=False,
    )
    server, port = start(small, max_message_mb=1)
    try:
        with SearchClient(f"127.0.0.1:{port}") as c:
            with pytest.raises(ServiceError, match="HISTO_GRPC__MAX_MESSAGE_MB") as caught:
                c.search(image=b"\x89PNG" + os.urandom(1_200_000))
            assert caught.value.grpc_code == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]
            big = png(np.full((100, 100, 3), 128, dtype=np.uint8))  # 10,000 px > 5,000
            with pytest.raises(ImageTooLargeError, match="HISTO_IMAGES__MAX_PIXELS") as too_big:
                c.search(image=big)
            assert too_big.value.grpc_code == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]
            assert c.search(image=png(tissue_array(60, 60)), top_k=1).hits
    finally:
        server.stop(None).wait()


class BrokenEngine:
    """Stands in for an engine whose store went away, and which fails in unexpected ways."""

    def search(self, **kwargs: Any) -> SearchResult:
        raise StoreUnavailableError("cannot reach Qdrant at http://qdrant:6333; is it running?")

    def list_encoders(self) -> list[Any]:
        raise RuntimeError(f"boom: the token is {TOKEN}")

    def stats(self) -> Any:
        raise KeyError("points")


def test_unavailable_and_internal(caplog: pytest.LogCaptureFixture) -> None:
    server, port = start(lambda: BrokenEngine(), token=TOKEN)
    try:
        server.wait_ready(30)
        with SearchClient(f"127.0.0.1:{port}", token=TOKEN) as c:
            with pytest.raises(StoreUnavailableError, match="cannot reach Qdrant") as caught:
                c.search(vector=[1.0])
            assert caught.value.grpc_code == "UNAVAILABLE"  # type: ignore[attr-defined]
            with caplog.at_level(logging.ERROR, logger="services.search"):
                with pytest.raises(ServiceError, match=r"INTERNAL: internal error \(ref (\w+)\)") as internal:
                    c.list_encoders()
                with pytest.raises(ServiceError, match="INTERNAL"):
                    c.stats()
        ref = re.search(r"ref (\w+)", str(internal.value)).group(1)  # type: ignore[union-attr]
        assert TOKEN not in str(internal.value)
        lines = [r.getMessage() for r in caplog.records if ref in r.getMessage()]
        assert len(lines) == 1 and "Traceback" in lines[0] and "RuntimeError: boom" in lines[0]
        assert TOKEN not in caplog.text and "***" in lines[0]
    finally:
        server.stop(None).wait()


# ------------------------------------------------------------------------------------------------
# Health, reflection, access
# ------------------------------------------------------------------------------------------------


def test_health_serving_and_unknown_service(client: SearchClient) -> None:
    assert client.health() == "SERVING"
    assert client.health(SERVICE) == "SERVING"
    with pytest.raises(NotFoundError):
        client.health("no.such.Service")


def test_health_is_serving_only_after_encoders_load(engine: SearchEngine) -> None:
    release = threading.Event()

    def slow() -> SearchEngine:
        release.wait(30)
        return engine

    server, port = start(slow)
    try:
        with SearchClient(f"127.0.0.1:{port}") as c:
            assert c.health() == "NOT_SERVING" and c.health(SERVICE) == "NOT_SERVING"
            with pytest.raises(ServiceUnavailableError, match="still loading its encoders"):
                c.list_encoders()
            release.set()
            assert server.wait_ready(30) is engine
            assert c.health() == "SERVING" and c.list_encoders()
    finally:
        server.stop(None).wait()
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    assert server.health.Check(request, None).status == health_pb2.HealthCheckResponse.NOT_SERVING

    def failing() -> SearchEngine:
        raise InvalidInputError("artifact broken; re-create it")

    server, port = start(failing)
    try:
        with pytest.raises(InvalidInputError, match="artifact broken"):
            server.wait_ready(30)
        with SearchClient(f"127.0.0.1:{port}") as c:
            assert c.health() == "NOT_SERVING"
            with pytest.raises(ServiceUnavailableError, match="failed to load its encoders: artifact broken"):
                c.search(vector=[1.0])
    finally:
        server.stop(None).wait()


def reflected_services(port: int, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), timeout=30, metadata=metadata)
        return [s.name for r in responses for s in r.list_services_response.service]


def test_reflection_lists_the_service(server: tuple[SearchServer, int]) -> None:
    assert {SERVICE, "grpc.health.v1.Health"} <= set(reflected_services(server[1]))
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
        assert response.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN.upper()])
def test_token_required_when_set(token_server: int, token: str | None) -> None:
    with SearchClient(f"127.0.0.1:{token_server}", token=token) as c:
        for call in (c.list_encoders, c.stats, lambda: c.search(vector=[1.0] * 512)):
            with pytest.raises(AuthenticationError, match="authorization: Bearer") as caught:
                call()
            assert caught.value.grpc_code == "UNAUTHENTICATED"
        assert c.health() == "SERVING"  # probes need no token
    with pytest.raises(grpc.RpcError) as refused:
        reflected_services(token_server)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_token_accepted(token_server: int, client: SearchClient) -> None:
    with SearchClient(f"127.0.0.1:{token_server}", token=TOKEN) as c:
        assert c.list_encoders() == client.list_encoders()
        assert c.search(vector=[1.0] * 512, top_k=3).hits == client.search(vector=[1.0] * 512, top_k=3).hits
    assert SERVICE in reflected_services(token_server, (("authorization", f"Bearer {TOKEN}"),))
    # token off: the plain server takes calls without one (the other tests)
    assert client.health() == "SERVING" and client.stats().points > 0


def test_tls(engine: SearchEngine, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed; it makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    server, port = start(engine, tls_cert=cert, tls_key=key, token=TOKEN)
    try:
        with SearchClient(f"localhost:{port}", token=TOKEN, tls_ca=cert) as c:
            assert c.health() == "SERVING" and [i.name for i in c.list_encoders()] == ["colorhist", "random"]
        with SearchClient(f"localhost:{port}", token=TOKEN, timeout=5) as plain, pytest.raises(ServiceError):
            plain.list_encoders()
    finally:
        server.stop(None).wait()
    with pytest.raises(InvalidInputError, match="both a certificate and a key"):
        create_server(GrpcSettings(port=0, tls_cert=cert), engine)


def test_busy_port_is_refused(server: tuple[SearchServer, int], engine: SearchEngine) -> None:
    with pytest.raises(InvalidInputError, match=r"cannot listen on 127\.0\.0\.1"):
        create_server(GrpcSettings(host="127.0.0.1", port=server[1]), engine)


# ------------------------------------------------------------------------------------------------
# `histocli serve` as a process: ownership of the index, `histocli search --server`, SIGTERM
# ------------------------------------------------------------------------------------------------


def test_histocli_serve_end_to_end(
    homes: tuple[Path, Path], engine: SearchEngine, records: list[Any]
) -> None:
    home = homes[1]
    env = {
        **os.environ,
        "HISTO_HOME": str(home),
        "HISTO_TILING__TILE_SIZE": str(TILE),
        "HISTO_GRPC__TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [str(BIN / "histocli"), "serve", "--port", "0", "--torch-threads", "1", "--grace", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        lines.append(line)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) \(plaintext, token required\)", line)
        assert match, line
        address = f"127.0.0.1:{match.group(1)}"
        point = records[0].id
        with SearchClient(address, token=TOKEN) as c:
            c.wait_ready(60)
            served = c.search(point_id=point, exact=True)
        assert served.hits == engine.search(point_id=point, exact=True).hits  # same data, same answer

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "histocli"), "search", *args], env=env, capture_output=True, text=True, timeout=120
            )

        owned = cli("--id", point)
        assert owned.returncode == 1 and owned.stderr.count("\n") == 1, owned.stderr
        assert f"in use by pid {process.pid}" in owned.stderr
        assert f"go through it with --server {address}" in owned.stderr  # the exact address
        remote = cli("--id", point, "--server", address, "--json", "--exact")
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout.count('"id"') == 10 and served.hits[0].id in remote.stdout

        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        lines.append(rest)
        assert process.returncode == 0, "".join(lines)
        assert "SIGTERM: stopping" in rest and rest.rstrip().endswith("stopped")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    with EdgeStore(home / "index") as reopened:  # the server let go of the index
        assert reopened.count() == len(records)


def test_python_m_services_search_reports_a_locked_index(homes: tuple[Path, Path], store: EdgeStore) -> None:
    env = {**os.environ, "HISTO_HOME": str(homes[0])}  # this test process owns that index
    run = subprocess.run(
        [sys.executable, "-m", "services.search", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and run.stderr.startswith("error: the index at") and "in use by" in run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


def test_errors_are_histo_errors(client: SearchClient) -> None:
    with pytest.raises(HistoError):
        client.search(point_id="00000000-0000-4000-8000-000000000000")
    with SearchClient("127.0.0.1:1", timeout=5) as nowhere, pytest.raises(ServiceUnavailableError) as caught:
        nowhere.stats()
    assert "127.0.0.1:1" in str(caught.value) and caught.value.grpc_code == "UNAVAILABLE"
    with pytest.raises(InvalidInputError, match="HOST:PORT"):
        SearchClient(" ")
    with pytest.raises(InvalidInputError, match="top_k"):
        client.search(vector=[1.0], top_k=0)
    with pytest.raises(InvalidInputError, match="exactly one query"):
        client.search(vector=[1.0], point_id="x")
    with pytest.raises(ImageDecodeError, match="no such file"):
        client.search(image=Path("/nonexistent/query.png"))
