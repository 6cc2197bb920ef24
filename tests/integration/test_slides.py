"""Whole-slide images end to end: synthetic pyramids and the real SVS ingested in-process and
through the queue's batch path, slide search (leak-free, leave-one-slide-out), the heatmap, and
the same over gRPC and the CLI.

Index: 8 synthetic BACH-like slides (2 per class, 2048 x 1536 px at 0.5 µm/px, two tissue regions
each) plus ``cmu_small_region.svs`` (unlabelled), embedded with the ImageNet baseline (64 px input,
fast on CPU) and the colour histogram (the leak detector: it must not find the class).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.client import SearchClient
from histo.data.datasets import scan_dataset
from histo.data.records import Box
from histo.data.samples import WSI_SAMPLE
from histo.data.slides import open_slide
from histo.data.synth_slides import SynthSlide, write_synthetic_slides
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import NotFoundError
from histo.evaluation import evaluate_slides
from histo.ingest import Ingestor, ingest
from histo.jobs import plan_batches, process_batch
from histo.search import SearchEngine
from histo.settings import GrpcSettings, get_settings
from histo.slide_search import build_mosaics, slide_ids_of
from histo.store import EdgeStore, SearchFilter, open_store
from services.search.server import create_server
from tests.helpers import tissue_array
from tests.search_home import png

pytestmark = pytest.mark.integration

ENCODERS = ("imagenet", "colorhist")
SIZE = (1536, 2048)


def overlaps(a: Box, b: Box) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Any]:
    """The slide set, its home (index and encoders) and a copy of the home for the CLI."""
    home = tmp_path_factory.mktemp("home")
    root = home / "data" / "wsi"
    slides = write_synthetic_slides("bach", root, slides_per_class=2, seed=3, size=SIZE)
    shutil.copy(WSI_SAMPLE, root / WSI_SAMPLE.name)
    with (root / "slides.csv").open("a") as table:
        table.write(f"{WSI_SAMPLE.name},,cmu,,\n")
    for name in ENCODERS:
        make_baseline_artifact(name, home / "encoders" / name, input_size=224)
    embedders = {n: Embedder.from_artifact(home / "encoders" / n, device="cpu") for n in ENCODERS}
    with open_store(path=home / "index") as store:
        summary = ingest(
            scan_dataset(root, "slides").records,
            Ingestor(store, embedders, batch_size=32),
            TilingConfig(),
            10**9,
            num_workers=0,
            progress=False,
        )
    copy = tmp_path_factory.mktemp("copy") / "home"
    shutil.copytree(home, copy)
    return {"home": home, "copy": copy, "slides": slides, "summary": summary}


@pytest.fixture(scope="module")
def store(world: dict[str, Any]) -> Iterator[EdgeStore]:
    with EdgeStore(world["home"] / "index") as s:
        yield s


@pytest.fixture(scope="module")
def engine(store: EdgeStore, world: dict[str, Any]) -> SearchEngine:
    return SearchEngine.load(store, world["home"] / "encoders")


def region_png(slide: SynthSlide, side: int = 448) -> bytes:
    """A square cut from the middle of the slide's first tissue region (level 0, as a photo)."""
    region = slide.regions[0]
    x, y = region.x + (region.w - side) // 2, region.y + (region.h - side) // 2
    with open_slide(slide.path) as opened:
        pixels = opened.read(Box(x, y, side, side), side)
    return png(pixels)


def test_every_slide_is_indexed_on_its_tissue_with_a_mosaic(world: dict[str, Any], store: EdgeStore) -> None:
    summary = world["summary"]
    assert summary.failed == [] and summary.images == 9 and len(summary.mosaics) == 9
    for slide in world["slides"]:
        tiles = list(store.scroll(SearchFilter(slide_ids=(slide.slide_id,))))
        assert len(tiles) >= 4, slide.slide_id
        for t in tiles:
            p = t.payload
            box = Box(p["x"], p["y"], p["w"], p["h"])
            assert any(overlaps(box, r) for r in slide.regions), (slide.slide_id, box)
            assert (p["level"], p["mpp"], p["label"]) == (0, 0.5, slide.label)
        assert summary.mosaics[slide.slide_id] == min(len(tiles), 16)
    real = list(store.scroll(SearchFilter(slide_ids=("cmu",))))
    assert len(real) > 20 and real[0].payload["mpp"] == pytest.approx(0.499)


def test_slide_search_finds_the_class_without_leaks(store: EdgeStore) -> None:
    results = evaluate_slides(store, "slides", list(ENCODERS), [1, 3], progress=False)
    imagenet, colorhist = (results[n].summary["overall"] for n in ENCODERS)
    assert results["imagenet"].summary["protocol"] == {"level": "slide", "queries": 8, "slides": 9}
    assert imagenet["Acc@1"] >= 0.75 and imagenet["mMV@1"] >= 0.75  # the query slide's class first
    assert colorhist["Acc@1"] <= 0.5  # stain is drawn per slide: colour alone must not find the class


def test_a_region_query_ranks_its_slide_and_the_heatmap_finds_the_region(
    engine: SearchEngine, world: dict[str, Any]
) -> None:
    slide = world["slides"][5]
    query = region_png(slide)
    found = engine.search_slides(image=query, encoder="imagenet", top_k=3)
    assert found.slides[0].slide_id == slide.slide_id and found.slides[0].label == slide.label
    assert len(found.query_boxes) == 4 and all(t.query_tile is not None for t in found.slides[0].tiles)
    drawn = engine.heatmap(image=query, slide_id=slide.slide_id, encoder="imagenet", size=512)
    assert drawn.data.startswith(b"\x89PNG") and drawn.width > 300
    hottest, score = drawn.best[0]
    assert overlaps(hottest, slide.regions[0]) and score > 0.9
    by_tile = engine.heatmap(
        point_id=found.slides[0].tiles[0].id, slide_id=slide.slide_id, encoder="imagenet"
    )
    assert by_tile.best[0][1] == pytest.approx(1.0, abs=1e-4)  # the tile itself is the hottest


def test_slide_search_errors(engine: SearchEngine) -> None:
    with pytest.raises(NotFoundError, match="no slide 'nope' in the index; its slides: bach_wsi_000, "):
        engine.search_slides(slide_id="nope")
    with pytest.raises(
        NotFoundError, match=re.escape("no slide 'BACH_WSI_003' in the index (did you mean 'bach_wsi_003'?)")
    ):
        engine.heatmap(image=png(tissue_array(224, 224)), slide_id="BACH_WSI_003")
    with pytest.raises(ValueError, match="exactly one"):
        engine.search_slides()


def test_the_same_over_grpc(engine: SearchEngine, world: dict[str, Any]) -> None:
    server, port = create_server(GrpcSettings(host="127.0.0.1", port=0), engine, max_workers=2)
    server.start()
    try:
        with SearchClient(f"127.0.0.1:{port}", timeout=120) as client:
            slide = world["slides"][2]
            remote = client.search_slides(slide_id=slide.slide_id, encoder="imagenet", top_k=4)
            local = engine.search_slides(slide_id=slide.slide_id, encoder="imagenet", top_k=4)
            assert remote.slides == local.slides and slide.slide_id not in {s.slide_id for s in remote.slides}
            query = region_png(slide)
            drawn = client.heatmap(image=query, slide_id=slide.slide_id, encoder="imagenet", size=400)
            assert drawn.best == engine.heatmap(image=query, slide_id=slide.slide_id, encoder="imagenet").best
            with pytest.raises(NotFoundError):
                client.search_slides(slide_id="nope")
    finally:
        server.stop(None)


def test_the_web_api_serves_slide_search_and_heatmaps(engine: SearchEngine, world: dict[str, Any]) -> None:
    import httpx

    from services.web.app import create_app
    from services.web.server import WebServer

    server = WebServer(create_app(engine)).start()
    slide = world["slides"][6]
    try:
        with httpx.Client(base_url=server.url, timeout=120) as web:
            body = {"slide_id": slide.slide_id, "encoder": "imagenet", "top_k": 3}
            found = web.post("/api/slides/search", json=body).json()
            local = engine.search_slides(slide_id=slide.slide_id, encoder="imagenet", top_k=3)
            assert found == json.loads(json.dumps(local.as_dict() | {"took_ms": found["took_ms"]}))
            files = {"image": ("q.png", region_png(slide), "image/png")}
            fields = {"slide_id": slide.slide_id, "encoder": "imagenet", "size": "300"}
            drawn = web.post("/api/heatmap", files=files, data=fields)
            assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
            x, y, w, h, _ = drawn.headers["x-best-boxes"].split(";")[0].split(",")
            assert any(overlaps(Box(int(x), int(y), int(w), int(h)), r) for r in slide.regions)
            missing = web.post("/api/heatmap", json={"point_id": "00000000-0000-4000-8000-000000000000"})
            assert missing.status_code == 422 and "slide_id" in missing.json()["error"]["message"]
            unknown = web.post("/api/slides/search", json={"slide_id": "nope"})
            assert unknown.status_code == 404 and unknown.json()["error"]["class"] == "NotFoundError"
    finally:
        server.stop()


def test_the_queue_batch_path_indexes_slides_as_in_process(world: dict[str, Any], tmp_path: Path) -> None:
    root = world["home"] / "data" / "wsi"
    records = [r for r in scan_dataset(root, "slides").records if r.slide_id in ("bach_wsi_000", "cmu")]
    embedders = {"colorhist": Embedder.from_artifact(world["home"] / "encoders" / "colorhist", device="cpu")}
    plan = plan_batches(records, TilingConfig(), 10**9, tiles_per_batch=16)
    assert plan.failures == [] and all(len(b.items) >= 1 for b in plan.batches)
    with open_store(path=tmp_path / "index") as queued:
        ingestor = Ingestor(queued, embedders, batch_size=16)
        for batch in plan.batches:
            assert process_batch(batch, ingestor, TilingConfig(), 10**9).failures == []
        ids = slide_ids_of(queued, "slides")
        assert ids == ["bach_wsi_000", "cmu"]
        assert build_mosaics(queued, "colorhist", "slides", ids)["bach_wsi_000"] >= 4
        queued_ids = {r.id for r in queued.scroll()}
    with EdgeStore(world["copy"] / "index") as reference:
        expected = {r.id for r in reference.scroll(SearchFilter(slide_ids=("bach_wsi_000", "cmu")))}
    assert queued_ids == expected  # same deterministic points as in-process ingestion


def test_the_cli(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HISTO_HOME", str(world["copy"]))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        slide = world["slides"][0]
        found = runner.invoke(
            app, ["search", "--slides", "--slide-id", slide.slide_id, "-e", "imagenet", "--json"]
        )
        assert found.exit_code == 0, found.output
        assert json.loads(found.stdout)["slides"][0]["label"] == slide.label
        by_file = runner.invoke(
            app, ["search", str(slide.path), "--slides", "-e", "imagenet", "-k", "2", "--json"]
        )
        assert by_file.exit_code == 0, by_file.output
        assert json.loads(by_file.stdout)["slides"][0]["slide_id"] == slide.slide_id  # a slide finds itself
        out = tmp_path / "map.png"
        drawn = runner.invoke(app, ["heatmap", str(slide.path), "--slide", slide.slide_id, "--out", str(out)])
        assert drawn.exit_code == 0 and out.read_bytes().startswith(b"\x89PNG"), drawn.output
        evaluated = runner.invoke(app, ["evaluate", "-d", "slides", "--level", "slide", "-k", "1,3"])
        assert evaluated.exit_code == 0 and "leave-one-slide-out" in evaluated.output, evaluated.output
        (report,) = (world["copy"] / "reports" / "slides-slides").iterdir()  # one new folder per run
        assert (report / "metrics.json").is_file() and "95 % bootstrap" in (report / "report.md").read_text()
        missing = runner.invoke(app, ["search", "--slides", "--slide-id", "nope"])
        assert missing.exit_code == 1 and "no slide 'nope' in the index; its slides:" in missing.output
    finally:
        get_settings.cache_clear()
