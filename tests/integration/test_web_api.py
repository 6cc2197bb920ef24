"""The web runtime's JSON API for real: uvicorn on a loopback port, HTTP through httpx.

Over the same small real index as the gRPC tests (synthetic BACH and BRACS, colorhist and random
encoders): every endpoint, every error class and status, the token, the body and pixel limits,
a moved data set, ``/api/search`` against ``histocli search --json``, and the page searching
through a running gRPC server (``--server``) as well as in-process.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app as cli_app
from histo.client import SearchClient
from histo.data.tile_source import BOX_COLOUR, TileSource
from histo.data.tiling import TilingConfig
from histo.search import MAX_EXAMPLES, Feedback, SearchEngine
from histo.settings import GrpcSettings, get_settings
from histo.store import EdgeStore, Record, open_store
from services.search.errors import STATUS_TABLE as GRPC_TABLE
from services.search.server import create_server
from services.web.app import create_app
from services.web.errors import STATUS_TABLE as HTTP_TABLE
from services.web.server import WebServer
from tests.integration.fake_qdrant import FakeQdrant
from tests.search_home import TILE, png

pytestmark = pytest.mark.integration

TOKEN = "web-token-for-tests"
LIMIT = 2 * 1024 * 1024
BIN = Path(sys.executable).parent
MISSING_ID = "00000000-0000-4000-8000-000000000000"
BOTH = ["colorhist", "random"]


# ------------------------------------------------------------------------------------------------
# A real index, an engine, and the page serving it
# ------------------------------------------------------------------------------------------------


def serve(backend: Any, **options: Any) -> WebServer:
    options.setdefault("max_upload_bytes", LIMIT)
    return WebServer(create_app(backend, **options)).start()


@pytest.fixture(scope="module")
def web(engine: SearchEngine) -> Iterator[httpx.Client]:
    server = serve(engine)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
    server.stop()


@pytest.fixture(scope="module")
def records(store: EdgeStore) -> list[Record]:
    return list(store.scroll())


def bach_file(homes: tuple[Path, Path]) -> Path:
    return sorted((homes[0] / "data" / "bach").rglob("*.tif"))[0]


def upload(data: bytes, name: str = "query.tif", **fields: Any) -> dict[str, Any]:
    return {"files": {"image": (name, data, "application/octet-stream")}, "data": fields}


def hits_of(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["id"], h["score"]) for h in body["hits"]]


def error_of(response: httpx.Response, status: int, error_class: str) -> str:
    """The one-line message of a JSON error with that status and class."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["status"] == status and error["class"] == error_class, error
    message = str(error["message"])
    assert message and "\n" not in message and "Traceback" not in message
    return message


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ------------------------------------------------------------------------------------------------
# Every endpoint
# ------------------------------------------------------------------------------------------------


def test_encoders_and_stats_mirror_the_engine(web: httpx.Client, engine: SearchEngine) -> None:
    encoders = web.get("/api/encoders").json()["encoders"]
    assert [e["name"] for e in encoders] == ["colorhist", "random"]
    assert [e["is_default"] for e in encoders] == [False, True]
    expected = [dataclasses.asdict(i) | {"trained_on": i.trained_on} for i in engine.list_encoders()]
    assert encoders == json.loads(json.dumps(expected))
    stats = web.get("/api/stats").json()
    assert stats == json.loads(json.dumps(engine.stats().as_dict()))
    assert set(stats["labels"]["bach"]) == {"Normal", "Benign", "InSitu", "Invasive"}
    assert web.get("/api/health").json() == {"status": "SERVING", "encoders": ["colorhist", "random"]}


def test_search_by_upload_equals_the_engine(
    web: httpx.Client, engine: SearchEngine, homes: tuple[Path, Path]
) -> None:
    data = bach_file(homes).read_bytes()
    body = web.post("/api/search", **upload(data, top_k="7", per_image="1")).json()
    expected = engine.search(image=data, top_k=7, per_image=1)
    assert hits_of(body) == [(h.id, h.score) for h in expected.hits] and len(body["hits"]) == 7
    assert body["encoder"] == "random" and len(body["query_boxes"]) == len(expected.query_boxes) > 1
    assert all("query_tile" in h for h in body["hits"])
    assert len({h["payload"]["image_id"] for h in body["hits"]}) == 7  # per_image 1


def test_filters_and_point_and_vector_queries(web: httpx.Client, records: list[Record]) -> None:
    data = png(np.asarray(Image.new("RGB", (TILE, TILE), (190, 110, 160))))
    labelled = web.post(
        "/api/search",
        **upload(data, "q.png", encoder="colorhist", dataset="bach", labels=["Benign", "InSitu"]),
    ).json()
    assert {h["payload"]["label"] for h in labelled["hits"]} <= {"Benign", "InSitu"}
    assert {h["payload"]["dataset"] for h in labelled["hits"]} == {"bach"} and len(labelled["hits"]) == 10
    point = next(r for r in records if r.payload["dataset"] == "bracs")
    by_id = web.post("/api/search", json={"point_id": point.id, "top_k": 5, "split": "test"}).json()
    assert point.id not in {h["id"] for h in by_id["hits"]} and by_id["query_boxes"] == []
    assert {h["payload"]["split"] for h in by_id["hits"]} == {"test"}
    vector = np.random.default_rng(1).random(512).tolist()
    by_vector = web.post("/api/search", json={"vector": vector, "encoder": "colorhist", "top_k": 3}).json()
    assert len(by_vector["hits"]) == 3 and by_vector["encoder"] == "colorhist"


@pytest.mark.parametrize(
    ("fusion", "fields"), [("rrf", {}), ("dbsf", {"fusion": "dbsf"})], ids=["rrf-default", "dbsf"]
)
def test_fused_encoders_say_which_encoders_found_each_hit(
    web: httpx.Client, engine: SearchEngine, homes: tuple[Path, Path], fusion: str, fields: dict[str, str]
) -> None:
    data = bach_file(homes).read_bytes()
    body = web.post("/api/search", **upload(data, encoders=BOTH, top_k="8", **fields)).json()
    assert body["fusion"] == fusion and body["encoders"] == BOTH and len(body["hits"]) == 8
    assert all(h["found_by"] and set(h["found_by"]) <= set(BOTH) for h in body["hits"])
    expected = engine.search(image=data, encoders=BOTH, fusion=fusion, top_k=8)
    assert hits_of(body) == [(h.id, h.score) for h in expected.hits]


def test_liked_and_unliked_tiles_steer_and_leave_the_results(
    web: httpx.Client, engine: SearchEngine, records: list[Record]
) -> None:
    point = records[3].id
    first = [h["id"] for h in web.post("/api/search", json={"point_id": point, "top_k": 6}).json()["hits"]]
    like, unlike = first[:2], first[2:3]
    request = {"point_id": point, "top_k": 6, "like": like, "unlike": unlike}
    again = web.post("/api/search", json=request).json()
    assert len(again["hits"]) == 6 and not {h["id"] for h in again["hits"]} & {point, *like, *unlike}
    expected = engine.search(point_id=point, top_k=6, feedback=Feedback(tuple(like), tuple(unlike)))
    assert hits_of(again) == [(h.id, h.score) for h in expected.hits]
    chosen = web.post("/api/search", json=request | {"strategy": "best_score"}).json()
    feedback = Feedback(tuple(like), tuple(unlike), strategy="best_score")
    assert hits_of(chosen) == [
        (h.id, h.score) for h in engine.search(point_id=point, feedback=feedback, top_k=6).hits
    ]


def test_a_form_repeats_like_and_unlike_and_liked_tiles_alone_are_a_query(
    web: httpx.Client, engine: SearchEngine, homes: tuple[Path, Path], records: list[Record]
) -> None:
    data = bach_file(homes).read_bytes()
    like, unlike = [records[0].id, records[7].id], [records[12].id]
    body = web.post("/api/search", **upload(data, like=like, unlike=unlike, top_k="5")).json()
    expected = engine.search(image=data, top_k=5, feedback=Feedback(tuple(like), tuple(unlike)))
    assert hits_of(body) == [(h.id, h.score) for h in expected.hits] and len(body["hits"]) == 5
    alone = web.post("/api/search", data={"like": like, "top_k": "5"}).json()  # a plain form, no query
    assert hits_of(alone) == [
        (h.id, h.score) for h in engine.search(top_k=5, feedback=Feedback(like=tuple(like))).hits
    ]
    assert not {h["id"] for h in alone["hits"]} & set(like)


def test_tiles_and_source_images_come_from_the_source_files(
    web: httpx.Client, records: list[Record], homes: tuple[Path, Path]
) -> None:
    record = next(r for r in records if r.payload["dataset"] == "bach" and r.payload["x"] > 0)
    p = record.payload
    tile = web.get(f"/api/tiles/{record.id}")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    source = np.asarray(Image.open(homes[0] / "data" / "bach" / p["path"]).convert("RGB"))
    assert np.array_equal(decode(tile.content), source[p["y"] : p["y"] + p["h"], p["x"] : p["x"] + p["w"]])
    thumb = web.get(f"/api/tiles/{record.id}", params={"size": 32, "format": "jpeg"})
    assert thumb.headers["content-type"] == "image/jpeg" and decode(thumb.content).shape == (32, 32, 3)
    whole = web.get(f"/api/images/{record.id}", params={"size": 64, "format": "png"})
    x, y, w, h = map(int, whole.headers["x-tile-box"].split(","))
    image = decode(whole.content)
    assert max(image.shape[:2]) == 64 and (w, h) == (32, 32)  # 128 x 64 source at half size
    assert tuple(image[y, x + w // 2]) == BOX_COLOUR


def test_preview_gives_a_png_and_the_original_size(web: httpx.Client, homes: tuple[Path, Path]) -> None:
    data = bach_file(homes).read_bytes()
    response = web.post("/api/preview", **upload(data, size="32"))
    width, height = Image.open(io.BytesIO(data)).size
    assert response.headers["content-type"] == "image/png"
    assert (int(response.headers["x-image-width"]), int(response.headers["x-image-height"])) == (
        width,
        height,
    )
    assert max(decode(response.content).shape[:2]) == 32


def test_the_page_and_its_scripts_are_served_by_histo(web: httpx.Client) -> None:
    page = web.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert re.findall(r'(?:src|href)="(https?:)?//', page.text) == []  # nothing from another host
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert web.get(asset).status_code == 200, asset
    spec = web.get("/api/openapi.json").json()
    assert {
        "/api/search",
        "/api/encoders",
        "/api/stats",
        "/api/tiles/{point_id}",
        "/api/images/{point_id}",
    } <= set(spec["paths"])
    assert set(spec["paths"]["/api/search"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert (
        {"SearchParams", "SlideSearchParams", "HeatmapParams"} <= refs <= set(spec["components"]["schemas"])
    )


def test_api_search_equals_histocli_search_json(
    web: httpx.Client, homes: tuple[Path, Path], records: list[Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTO_HOME", str(homes[1]))
    monkeypatch.setenv("HISTO_TILING__TILE_SIZE", str(TILE))
    get_settings.cache_clear()
    try:
        query = bach_file(homes)
        point = records[3].id
        cases = [
            (["search", str(query), "--json", "-k", "6"], upload(query.read_bytes(), top_k="6")),
            (
                [
                    "search",
                    str(query),
                    "--json",
                    "-e",
                    "colorhist",
                    "-d",
                    "bach",
                    "-l",
                    "Normal",
                    "--per-image",
                    "1",
                ],
                upload(
                    query.read_bytes(), encoder="colorhist", dataset="bach", labels="Normal", per_image="1"
                ),
            ),
            (["search", "--id", point, "--json", "-k", "4"], {"json": {"point_id": point, "top_k": 4}}),
        ]
        for argv, request in cases:
            run = CliRunner().invoke(cli_app, argv)
            assert run.exit_code == 0, run.output
            cli, api = json.loads(run.output), web.post("/api/search", **request).json()
            assert hits_of(api) == hits_of(cli) and api["hits"] == cli["hits"]
            assert api["query_boxes"] == cli["query_boxes"] and api["encoder"] == cli["encoder"]
    finally:
        get_settings.cache_clear()


# ------------------------------------------------------------------------------------------------
# Every error: one JSON line, the gRPC table's classes
# ------------------------------------------------------------------------------------------------


def test_the_http_table_follows_the_grpc_table() -> None:
    http_of = dict(HTTP_TABLE)
    expected = {
        "RESOURCE_EXHAUSTED": 413,
        "INVALID_ARGUMENT": 422,
        "NOT_FOUND": 404,
        "FAILED_PRECONDITION": 409,
        "UNAVAILABLE": 503,
    }
    for cls, code in GRPC_TABLE:
        if cls in http_of:
            assert http_of[cls] == expected[code.name], cls
    assert {c.__name__ for c, _ in GRPC_TABLE if c.__name__ != "NotReadyError"} <= {
        c.__name__ for c in http_of
    }


@pytest.mark.parametrize(
    ("request_args", "status", "error_class", "words"),
    [
        ({"json": {"point_id": "not-a-uuid"}}, 422, "InvalidInputError", "not a UUID"),
        (
            {"json": {"point_id": "00000000-0000-4000-8000-000000000000"}},
            404,
            "NotFoundError",
            "not in the index",
        ),
        ({"json": {"vector": [1.0], "encoder": "nope"}}, 422, "UnknownNameError", "colorhist, random"),
        ({"json": {"vector": [1.0, 2.0], "encoder": "colorhist"}}, 422, "InvalidInputError", "512"),
        ({"json": {"vector": [1.0], "top_k": 0}}, 422, "InvalidInputError", "top_k"),
        ({"json": {"vector": [1.0], "top_k": 1001}}, 422, "InvalidInputError", "top_k"),
        ({"json": {"vector": [1.0], "per_image": 0}}, 422, "InvalidInputError", "per_image"),
        ({"json": {"vector": [1.0], "top_k": "many"}}, 422, "InvalidInputError", "top_k"),
        ({"json": {"vector": [1.0], "colour": "red"}}, 422, "InvalidInputError", "colour"),
        ({"json": {}}, 422, "InvalidInputError", "exactly one query"),
        ({"json": {"vector": [1.0], "point_id": "x"}}, 422, "InvalidInputError", "exactly one query"),
        ({"json": {"vector": [1.0], "dataset": " "}}, 422, "InvalidInputError", "dataset"),
        (
            {"json": {"like": [f"00000000-0000-4000-8000-{i:012d}" for i in range(MAX_EXAMPLES + 1)]}},
            422,
            "InvalidInputError",
            f"at most {MAX_EXAMPLES}",
        ),
        (  # the form takes that many fields: the engine's limit is the one a user meets
            upload(b"x", like=[f"00000000-0000-4000-8000-{i:012d}" for i in range(MAX_EXAMPLES + 1)]),
            422,
            "InvalidInputError",
            f"at most {MAX_EXAMPLES}",
        ),
        ({"json": {"like": [MISSING_ID]}}, 404, "NotFoundError", "not in the index"),
        ({"json": {"unlike": [MISSING_ID]}}, 422, "InvalidInputError", "liked examples"),
        ({"json": {"like": [MISSING_ID], "unlike": [MISSING_ID]}}, 422, "InvalidInputError", "both"),
        ({"json": {"like": MISSING_ID}}, 422, "InvalidInputError", "like"),
        ({"json": {"like": [MISSING_ID], "strategy": "vote"}}, 422, "UnknownNameError", "best_score"),
        (
            {"json": {"vector": [1.0], "encoders": BOTH, "diversity": 0.5}},
            422,
            "InvalidInputError",
            "diversity",
        ),
        ({"json": {"vector": [1.0], "diversity": 2}}, 422, "InvalidInputError", "diversity"),
        ({"json": {"vector": [1.0], "encoders": BOTH, "fusion": "max"}}, 422, "UnknownNameError", "dbsf"),
        ({"json": {"vector": [1.0], "encoders": "colorhist"}}, 422, "InvalidInputError", "encoders"),
        ({"json": [1, 2]}, 422, "InvalidInputError", "JSON body must be an object"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "InvalidInputError",
            "JSON",
        ),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 422, "InvalidInputError", "multipart"),
        ({"data": {"image": "text"}}, 422, "ImageDecodeError", "must be a file upload"),
        ({"data": {"point_id": "x", "top_k": "3"}}, 422, "InvalidInputError", "not a UUID"),
        (upload(b""), 422, "ImageDecodeError", "empty"),
        (upload(b"GIF89a not really"), 422, "ImageDecodeError", "not a recognised image"),
        (upload(png(np.zeros((8, 8, 3), dtype=np.uint8)), "tiny.png"), 422, "ImageDecodeError", "16 px"),
    ],
)
def test_search_errors(
    web: httpx.Client, request_args: dict[str, Any], status: int, error_class: str, words: str
) -> None:
    message = error_of(web.post("/api/search", **request_args), status, error_class)
    assert words in message


def test_multipart_text_field_named_image_is_refused(web: httpx.Client) -> None:
    response = web.post("/api/search", files={"image": (None, "just text")})
    assert "must be a file upload" in error_of(response, 422, "ImageDecodeError")


@pytest.mark.parametrize(
    ("path", "status", "error_class"),
    [
        ("/api/tiles/not-a-uuid", 422, "InvalidInputError"),
        ("/api/tiles/00000000-0000-4000-8000-000000000000", 404, "NotFoundError"),
        ("/api/images/00000000-0000-4000-8000-000000000000", 404, "NotFoundError"),
        ("/api/nothing/here", 404, "NotFoundError"),
        # no path from a request reaches the file system: not through a tile id, not through /static
        ("/api/tiles/..%2F..%2Fetc%2Fpasswd", 404, "NotFoundError"),
        ("/api/images/%2Fetc%2Fpasswd", 404, "NotFoundError"),
        ("/api/tiles/etc-passwd", 422, "InvalidInputError"),
        ("/static/..%2Fapp.py", 404, "NotFoundError"),
        ("/static/%2E%2E/%2E%2E/api.py", 404, "NotFoundError"),
    ],
)
def test_tile_errors(web: httpx.Client, path: str, status: int, error_class: str) -> None:
    error_of(web.get(path), status, error_class)


@pytest.mark.parametrize("params", [{"size": 4}, {"size": 9999}, {"size": "big"}, {"format": "gif"}])
def test_bad_tile_options(web: httpx.Client, records: list[Record], params: dict[str, Any]) -> None:
    message = error_of(web.get(f"/api/tiles/{records[0].id}", params=params), 422, "InvalidInputError")
    assert next(iter(params)) in message


def test_preview_errors(web: httpx.Client, homes: tuple[Path, Path]) -> None:
    assert "'image'" in error_of(web.post("/api/preview", data={"size": "32"}), 422, "InvalidInputError")
    data = bach_file(homes).read_bytes()
    error_of(web.post("/api/preview", **upload(data, size="1")), 422, "InvalidInputError")
    error_of(web.post("/api/preview", **upload(b"\x89PNG\r\n\x1a\n cut")), 422, "ImageDecodeError")


def test_uploads_over_the_limit_are_413_before_and_while_reading(web: httpx.Client) -> None:
    big = b"\0" * (LIMIT + 1)
    declared = web.post("/api/search", **upload(big))
    assert "limit of 2 MiB" in error_of(declared, 413, "MessageTooLargeError")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        for _ in range(3):
            yield b"\0" * (LIMIT // 2)

    streamed = web.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    error_of(streamed, 413, "MessageTooLargeError")


def test_images_over_the_pixel_limit_are_413(store: EdgeStore, homes: tuple[Path, Path]) -> None:
    small = SearchEngine.load(
        store, homes[0] / "encoders", tiling=TilingConfig(tile_size=TILE), max_pixels=5_000
    )
    server = serve(small, max_pixels=5_000)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            data = png(np.full((100, 100, 3), 150, dtype=np.uint8))  # 10,000 px > 5,000
            for route in ("/api/search", "/api/preview"):
                message = error_of(client.post(route, **upload(data, "big.png")), 413, "ImageTooLargeError")
                assert "HISTO_IMAGES__MAX_PIXELS" in message
    finally:
        server.stop()


def test_the_token_protects_the_api_but_not_health(engine: SearchEngine, records: list[Record]) -> None:
    server = serve(engine, token=TOKEN)
    tile = f"/api/tiles/{records[0].id}"
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for path in ("/api/encoders", "/api/stats", tile):
                assert "HISTO_WEB__TOKEN" in error_of(client.get(path), 401, "UnauthorisedError")
            error_of(
                client.get("/api/stats", headers={"authorization": "Bearer wrong"}), 401, "UnauthorisedError"
            )
            error_of(client.post("/api/search", json={"vector": [1.0]}), 401, "UnauthorisedError")
            assert client.get("/api/stats", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        with httpx.Client(base_url=server.url, timeout=60, cookies={"histo_token": TOKEN}) as browser:
            assert browser.get(tile).status_code == 200  # the cookie is what <img> sends
            assert browser.get("/api/health").status_code == 200
        with httpx.Client(base_url=server.url, timeout=60) as anonymous:
            assert anonymous.get("/api/health").status_code == 200
            assert anonymous.get("/").status_code == 200  # the page asks for the token itself
    finally:
        server.stop()


class BrokenBackend:
    """A backend whose calls fail unexpectedly, with a secret in the exception text."""

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine

    def list_encoders(self) -> Any:
        raise RuntimeError(f"boom with {TOKEN}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def test_unexpected_failures_are_500_with_a_reference_and_no_trace(
    engine: SearchEngine, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(BrokenBackend(engine), secrets=[TOKEN])
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            message = error_of(client.get("/api/encoders"), 500, "InternalError")
    finally:
        server.stop()
    ref = re.search(r"ref ([0-9a-f]{12})", message)
    assert ref and "boom" not in message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert ref.group(1) in logged and "boom with ***" in logged and TOKEN not in logged


def with_tiles(engine: SearchEngine, tiles: TileSource) -> SearchEngine:
    """The same store and encoders, reading tiles through ``tiles``."""
    embedders = {name: engine.embedder(name) for name in engine.encoders}
    return SearchEngine(engine.store, embedders, tiling=engine.tiling, tiles=tiles, warm_up=False)


def test_a_moved_data_set_is_one_clear_error_and_data_roots_fix_it(
    engine: SearchEngine, homes: tuple[Path, Path], records: list[Record], tmp_path: Path
) -> None:
    record = next(r for r in records if r.payload["dataset"] == "bracs")
    moved = tmp_path / "moved-bracs"
    shutil.copytree(homes[0] / "data" / "bracs", moved)
    for roots, status in (({"bracs": tmp_path / "gone"}, 404), ({"bracs": moved}, 200)):
        server = serve(with_tiles(engine, TileSource(roots)))
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                response = client.get(f"/api/tiles/{record.id}")
        finally:
            server.stop()
        if status == 404:
            message = error_of(response, 404, "SourceMissingError")
            assert str(tmp_path / "gone") in message and "HISTO_DATA_ROOTS" in message
        else:
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_a_store_that_is_down_is_503_and_recovers(homes: tuple[Path, Path]) -> None:
    dim = 512
    fake = FakeQdrant({"colorhist": dim}).start()
    store = open_store(url=fake.url)
    engine = SearchEngine.load(
        store, homes[0] / "encoders", ["colorhist"], tiling=TilingConfig(tile_size=TILE)
    )
    server = serve(engine)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            query = {"json": {"vector": [0.5] * dim, "top_k": 3}}
            assert client.post("/api/search", **query).json()["hits"] == []  # the store answers
            fake.stop()
            message = error_of(client.post("/api/search", **query), 503, "StoreUnavailableError")
            assert f"cannot reach Qdrant at {fake.url}" in message
            back = FakeQdrant({"colorhist": dim}, port=fake.port).start()
            try:
                assert client.post("/api/search", **query).status_code == 200  # no restart needed
            finally:
                back.stop()
    finally:
        server.stop()
        fake.stop()
        store.close()


# ------------------------------------------------------------------------------------------------
# Through a running gRPC server (--server), and `histocli web` as a process
# ------------------------------------------------------------------------------------------------


def test_the_page_over_grpc_answers_as_in_process(
    web: httpx.Client, engine: SearchEngine, records: list[Record], homes: tuple[Path, Path]
) -> None:
    grpc_server, port = create_server(
        GrpcSettings(host="127.0.0.1", port=0, token=TOKEN), engine, max_workers=4
    )
    grpc_server.start()
    client = SearchClient(f"127.0.0.1:{port}", token=TOKEN, timeout=60)
    server = serve(client)
    point = records[5].id
    try:
        with httpx.Client(base_url=server.url, timeout=60) as remote:
            for path in (
                "/api/encoders",
                "/api/stats",
                f"/api/tiles/{point}",
                f"/api/images/{point}?size=32",
            ):
                assert remote.get(path).content == web.get(path).content, path
            data = bach_file(homes).read_bytes()
            for request in (
                upload(data, top_k="5", labels="Benign"),
                {"json": {"point_id": point}},
                upload(data, encoders=BOTH, fusion="dbsf"),
                {"json": {"point_id": point, "like": [records[9].id], "unlike": [records[20].id]}},
            ):
                there, here = (
                    remote.post("/api/search", **request).json(),
                    web.post("/api/search", **request).json(),
                )
                assert hits_of(there) == hits_of(here)
                assert [h["found_by"] for h in there["hits"]] == [h["found_by"] for h in here["hits"]]
                assert (there["encoders"], there["fusion"]) == (here["encoders"], here["fusion"])
            error_of(
                remote.post("/api/search", json={"vector": [1.0], "encoder": "x"}), 422, "UnknownNameError"
            )
            error_of(remote.get("/api/tiles/00000000-0000-4000-8000-000000000000"), 404, "NotFoundError")
            error_of(remote.get(f"/api/tiles/{point}?size=4"), 422, "InvalidInputError")
            grpc_server.stop(None).wait()
            down = remote.get("/api/stats")
            assert "unavailable" in error_of(down, 503, "ServiceUnavailableError")
    finally:
        server.stop()
        client.close()
        grpc_server.stop(None)


def test_get_tile_rpc_checks_its_arguments(engine: SearchEngine, records: list[Record]) -> None:
    from histo.rpc.v1 import search_pb2, search_pb2_grpc

    grpc_server, port = create_server(GrpcSettings(host="127.0.0.1", port=0), engine, max_workers=2)
    grpc_server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            ok = stub.GetTile(search_pb2.GetTileRequest(point_id=records[0].id, size=32, format="jpeg"))
            assert ok.media_type == "image/jpeg" and (ok.width, ok.height) == (32, 32)
            source = stub.GetTile(
                search_pb2.GetTileRequest(point_id=records[0].id, view=search_pb2.GetTileRequest.SOURCE)
            )
            assert decode(source.image).shape[:2] == (source.height, source.width)
            for bad, code in (
                (search_pb2.GetTileRequest(point_id=records[0].id, size=5), grpc.StatusCode.INVALID_ARGUMENT),
                (
                    search_pb2.GetTileRequest(point_id=records[0].id, format="gif"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
                (search_pb2.GetTileRequest(point_id="x"), grpc.StatusCode.INVALID_ARGUMENT),
                (
                    search_pb2.GetTileRequest(point_id="00000000-0000-4000-8000-000000000000"),
                    grpc.StatusCode.NOT_FOUND,
                ),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.GetTile(bad)
                assert caught.value.code() == code
    finally:
        grpc_server.stop(None)


def test_histocli_web_serves_the_page_until_sigterm(homes: tuple[Path, Path]) -> None:
    env = {
        **os.environ,
        "HISTO_HOME": str(homes[1]),
        "HISTO_TILING__TILE_SIZE": str(TILE),
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [str(BIN / "histocli"), "web", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("searching the embedded index with encoders: colorhist, random"), first
        second = process.stdout.readline()
        match = re.match(r"open (http://127\.0\.0\.1:\d+) in a browser", second)
        assert match, second
        with httpx.Client(base_url=match.group(1), timeout=60) as client:
            assert client.get("/").status_code == 200
            assert client.get("/api/stats").json()["points"] > 30
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0 and rest.rstrip().endswith("stopped"), rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    with EdgeStore(homes[1] / "index") as reopened:  # the page let go of the index
        assert reopened.count() > 30


def test_histocli_web_reports_a_locked_index_in_one_line(homes: tuple[Path, Path], store: EdgeStore) -> None:
    env = {**os.environ, "HISTO_HOME": str(homes[0])}  # this test process owns that index
    run = subprocess.run(
        [str(BIN / "histocli"), "web", "--port", "0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert (
        run.returncode == 1 and run.stderr.startswith("error: the index at") and run.stderr.count("\n") == 1
    )


def test_a_heatmap_draws_one_whole_slide_image(
    web: httpx.Client, records: list[Record], homes: tuple[Path, Path]
) -> None:
    slide = next(r.payload["slide_id"] for r in records if r.payload["dataset"] == "bach")  # many photos
    response = web.post("/api/heatmap", **upload(bach_file(homes).read_bytes(), slide_id=slide))
    assert "one whole-slide image" in error_of(response, 422, "InvalidInputError")
