"""``histocli search`` through CliRunner: in-process over the embedded index, and ``--server``
against a real gRPC server on a free loopback port; errors are one red line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.ingest import Ingestor, ingest
from histo.search import Feedback, SearchEngine
from histo.settings import GrpcSettings, get_settings
from histo.store import EdgeStore, SearchFilter, open_store
from services.search.server import create_server

TILE = 64
TOKEN = "cli-test-token"
runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A HISTO_HOME with synthetic BACH (8 images x 2 tiles) embedded by colorhist and random."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("home")
    write_synthetic("bach", home / "bach", slides=2, tiles_per_slide=8, seed=0, tile_size=TILE)
    for name in ("colorhist", "random"):
        make_baseline_artifact(name, home / "encoders" / name, input_size=TILE)
    embedders = {n: Embedder.from_artifact(home / "encoders" / n) for n in ("colorhist", "random")}
    with open_store(path=home / "index") as store:
        records = scan_dataset(home / "bach", "bach").records
        ingest(
            records,
            Ingestor(store, embedders),
            TilingConfig(tile_size=TILE),
            10**8,
            num_workers=0,
            progress=False,
        )
    yield home
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def settings_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HISTO_HOME", str(home))
    monkeypatch.setenv("HISTO_TILING__TILE_SIZE", str(TILE))
    monkeypatch.delenv("HISTO_GRPC__TOKEN", raising=False)
    monkeypatch.delenv("HISTO_QDRANT__URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def query_image(home: Path) -> Path:
    return next((home / "bach").rglob("n001.tif"))


def search_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["search", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_image_search_prints_a_ranked_table(home: Path) -> None:
    result = runner.invoke(app, ["search", str(query_image(home)), "-k", "4"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "4 hits for" in result.output and "with random in" in result.output  # the default encoder
    assert "searched as 2 tiles (every tile with tissue)" in result.output
    assert "µm/px assumed to be the indexed images'" in result.output  # the TIFF records no resolution
    for column in ("score", "dataset", "label", "image", "box (x,y wxh)", "query tile"):
        assert column in result.output
    assert "n001" in result.output and "1.0000" in result.output  # the image itself is indexed


def test_json_filters_and_encoder(home: Path) -> None:
    report = search_json(
        str(query_image(home)), "-k", "3", "-d", "bach", "-l", "Benign", "-l", "InSitu", "-e", "colorhist"
    )
    assert report["encoder"] == "colorhist" and len(report["hits"]) == 3
    assert all(h["payload"]["label"] in ("Benign", "InSitu") for h in report["hits"])
    assert len(report["query_boxes"]) == 2 and all("query_tile" in h for h in report["hits"])
    empty = runner.invoke(app, ["search", str(query_image(home)), "-d", "bracs"])  # not ingested here
    assert empty.exit_code == 1 and "no data set 'bracs' in the index; it holds: bach" in empty.output
    split = search_json(
        str(query_image(home)), "--exclude-image", "n001", "--exclude-slide", "synth_slide_001"
    )
    assert all(h["payload"]["image_id"] != "n001" for h in split["hits"])
    assert all(h["payload"]["slide_id"] != "synth_slide_001" for h in split["hits"])
    grouped = search_json(str(query_image(home)), "--per-image", "1", "-k", "8")
    images = [h["payload"]["image_id"] for h in grouped["hits"]]
    assert len(images) == len(set(images)) == 8


def test_search_by_id(home: Path) -> None:
    first = search_json(str(query_image(home)), "-k", "1")["hits"][0]
    assert first["payload"]["image_id"] == "n001"
    others = search_json("--id", first["id"], "-k", "5")
    assert len(others["hits"]) == 5 and all(h["payload"]["image_id"] != "n001" for h in others["hits"])
    same = search_json("--id", first["id"], "-k", "15", "--same-image", "--exact")
    ids = [h["id"] for h in same["hits"]]
    assert first["id"] not in ids and "n001" in {h["payload"]["image_id"] for h in same["hits"]}
    table = runner.invoke(app, ["search", "--id", first["id"], "-k", "2"])
    assert table.exit_code == 0 and f"2 hits for tile {first['id']}" in table.output.replace("\n", " ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a query image or --id"),
        (["--id", "x", "IMAGE"], "give a query image or --id"),
        (["/nonexistent/query.png"], "no such image file"),
        (["IMAGE", "-e", "nnclr"], "unknown encoder 'nnclr'; choose one of: colorhist, random"),
        (["--id", "00000000-0000-4000-8000-000000000000"], "is not in the index"),
        (["NOT_AN_IMAGE"], "not_an_image.png: not a recognised image format"),
        (["--unlike", "00000000-0000-4000-8000-000000000000"], "give a query image or --id"),
        (["--like", "00000000-0000-4000-8000-000000000000"], "not in the index"),
        (["IMAGE", "-e", "colorhist", "-e", "random", "--diverse", "0.5"], "several encoders"),
        (["IMAGE", "--slides", "-e", "colorhist", "-e", "random"], "slide search takes one --encoder"),
        (["IMAGE", "--like-image", "/nonexistent/like.png"], "no such image file"),
    ],
)
def test_errors_are_one_red_line(home: Path, tmp_path: Path, args: list[str], message: str) -> None:
    junk = tmp_path / "not_an_image.png"
    junk.write_bytes(b"hello")
    args = [str(query_image(home)) if a == "IMAGE" else str(junk) if a == "NOT_AN_IMAGE" else a for a in args]
    result = runner.invoke(app, ["search", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error:")


def test_top_k_is_validated(home: Path) -> None:
    assert runner.invoke(app, ["search", str(query_image(home)), "-k", "0"]).exit_code == 2
    assert runner.invoke(app, ["search", str(query_image(home)), "--diverse", "1.5"]).exit_code == 2
    assert runner.invoke(app, ["search", str(query_image(home)), "--fusion", "max"]).exit_code == 2


def test_fused_search_names_the_encoders_that_found_each_hit(home: Path) -> None:
    image = str(query_image(home))
    report = search_json(image, "-e", "colorhist", "-e", "random", "--fusion", "dbsf", "-k", "5")
    assert report["encoders"] == ["colorhist", "random"] and report["fusion"] == "dbsf"
    assert len(report["hits"]) == 5 and all(
        set(h["found_by"]) <= {"colorhist", "random"} for h in report["hits"]
    )
    assert all(h["found_by"] for h in report["hits"])
    table = runner.invoke(
        app, ["search", image, "-e", "colorhist", "-e", "random", "-k", "3"], env={"COLUMNS": "250"}
    )
    assert table.exit_code == 0, table.output
    assert "with colorhist+random fused by rrf" in table.output and "found by" in table.output


def test_like_and_unlike_refine_and_leave_out_the_examples(home: Path) -> None:
    first = search_json(str(query_image(home)), "-k", "6", "-e", "colorhist")["hits"]
    liked, unliked = first[1]["id"], first[2]["id"]
    refined = search_json(
        str(query_image(home)), "-e", "colorhist", "--like", liked, "--unlike", unliked, "-k", "6"
    )
    ids = {h["id"] for h in refined["hits"]}
    assert len(ids) == 6 and not {liked, unliked} & ids
    alone = search_json("--like", liked, "--strategy", "best_score", "-k", "4")
    assert len(alone["hits"]) == 4 and liked not in {h["id"] for h in alone["hits"]}
    by_image = search_json("--like-image", str(query_image(home)), "-e", "colorhist", "-k", "3")
    assert by_image["hits"][0]["payload"]["image_id"] == "n001"  # the liked image is indexed


def test_diverse_reorders_the_nearest_tiles(home: Path) -> None:
    base = search_json("--id", search_json(str(query_image(home)), "-k", "1")["hits"][0]["id"], "-k", "8")
    query = base["hits"][0]["id"]
    plain = search_json("--id", query, "-e", "colorhist", "-k", "8", "--exact")
    zero = search_json("--id", query, "-e", "colorhist", "-k", "8", "--diverse", "0")
    diverse = search_json("--id", query, "-e", "colorhist", "-k", "8", "--diverse", "0.9")
    assert [h["id"] for h in zero["hits"]] == [h["id"] for h in plain["hits"]]
    assert [h["id"] for h in diverse["hits"]] != [h["id"] for h in plain["hits"]]


@pytest.fixture
def served(home: Path) -> Iterator[tuple[SearchEngine, int, int]]:
    """An engine over the index and two servers on it: without and with a token."""
    with EdgeStore(home / "index") as store:
        engine = SearchEngine.load(store, home / "encoders", tiling=TilingConfig(tile_size=TILE))
        plain, port = create_server(GrpcSettings(host="127.0.0.1", port=0), engine)
        locked, token_port = create_server(GrpcSettings(host="127.0.0.1", port=0, token=TOKEN), engine)
        plain.start()
        locked.start()
        try:
            yield engine, port, token_port
        finally:
            plain.stop(None).wait()
            locked.stop(None).wait()


def test_server_results_equal_in_process_results(home: Path, served: tuple[SearchEngine, int, int]) -> None:
    engine, port, _ = served
    image = query_image(home)
    for args, kwargs in (
        (["-k", "6"], {"top_k": 6}),
        (["-e", "colorhist", "-l", "Normal", "--per-image", "1"], {"encoder": "colorhist", "per_image": 1}),
        (["-e", "colorhist", "-e", "random", "-k", "5"], {"encoders": ["colorhist", "random"], "top_k": 5}),
    ):
        report = search_json(str(image), "--server", f"127.0.0.1:{port}", "--exact", *args)
        flt = SearchFilter(labels=("Normal",)) if "Normal" in args else None
        local = engine.search(image=image.read_bytes(), exact=True, filter=flt, **kwargs).as_dict()
        assert report["hits"] == local["hits"] and report["query_boxes"] == local["query_boxes"]
    liked = report["hits"][1]["id"]
    remote = search_json(
        "--server", f"127.0.0.1:{port}", "--like", liked, "--strategy", "sum_scores", "-k", "4"
    )
    local = engine.search(feedback=Feedback(like=(liked,), strategy="sum_scores"), top_k=4).as_dict()
    assert remote["hits"] == local["hits"] and liked not in {h["id"] for h in remote["hits"]}
    diverse = search_json(str(image), "--server", f"127.0.0.1:{port}", "--diverse", "0.6", "-e", "colorhist")
    assert (
        diverse["hits"]
        == engine.search(image=image.read_bytes(), encoder="colorhist", diversity=0.6).as_dict()["hits"]
    )
    table = runner.invoke(app, ["search", str(image), "--server", f"127.0.0.1:{port}"])
    assert table.exit_code == 0 and "10 hits for" in table.output


def test_server_token_from_settings(
    home: Path, served: tuple[SearchEngine, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, token_port = served
    args = ["search", str(query_image(home)), "--server", f"127.0.0.1:{token_port}", "--json"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "refused the call" in refused.output
    assert refused.output.strip().count("\n") == 0
    monkeypatch.setenv("HISTO_GRPC__TOKEN", TOKEN)
    get_settings.cache_clear()
    accepted = runner.invoke(app, args)
    assert accepted.exit_code == 0, accepted.output
    assert len(json.loads(accepted.stdout)["hits"]) == 10


def test_unreachable_server_is_one_line(home: Path) -> None:
    result = runner.invoke(app, ["search", str(query_image(home)), "--server", "127.0.0.1:1"])
    assert result.exit_code == 1 and "is unavailable" in result.output and "histocli serve" in result.output
