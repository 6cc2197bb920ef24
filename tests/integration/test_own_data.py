"""Your own data through the real runtimes: the owner of the index names its address, Ctrl-C is one
line, a retrained encoder is refused with the same words in-process, over gRPC and on the page,
and a queue worker with another artifact refuses its batch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.client import SearchClient
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.artifact import artifact_digest, load_meta, load_weights, save_artifact
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import InvalidInputError, NoMatchError, StaleVectorsError
from histo.search import SearchEngine
from histo.settings import GrpcSettings, get_settings
from histo.store import EdgeStore, SearchFilter
from services.search.server import create_server
from services.web.app import create_app
from services.web.server import WebServer
from tests.search_home import TILE, build_home, png

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
INTERRUPTED = "interrupted; rerun the same command to resume"


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    return env | {"HISTO_HOME": str(home), "HISTO_TILING__TILE_SIZE": str(TILE), "PYTHONUNBUFFERED": "1"}


def retrain(folder: Path) -> None:
    """Other weights under the same name: what ``histocli train --force`` leaves."""
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_weights(folder).items()}
    save_artifact(folder, load_meta(folder), state)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    build_home(home)  # bach and bracs, colorhist and random
    return home


# ------------------------------------------------------------------------------------------------
# The owner of the index says where it serves
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(home: Path) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.search", "--port", "0", "--torch-threads", "1", "--grace", "1"],
        env=env_for(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    address = None
    for line in process.stdout:
        found = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        if found:
            address = found.group(1)
            break
    assert address, "the search service did not start"
    with SearchClient(address, timeout=60) as client:
        client.wait_ready(60)
    yield address
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)


def test_an_index_in_use_names_the_server_to_go_through(
    home: Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTO_HOME", str(home))
    monkeypatch.setenv("HISTO_TILING__TILE_SIZE", str(TILE))
    get_settings.cache_clear()
    try:
        query = str(sorted((home / "data" / "bach").rglob("*.tif"))[0])
        for args in (["search", query], ["index", "stats"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 1 and f"--server {service}" in result.output, result.output
            assert result.output.strip().count("\n") == 0
        through = runner.invoke(app, ["index", "stats", "--server", service])
        assert through.exit_code == 0 and f"of the search service at {service}" in through.output
        searched = runner.invoke(app, ["search", query, "--server", service, "-k", "2"])
        assert searched.exit_code == 0 and "2 hits for" in searched.output
    finally:
        get_settings.cache_clear()
    page = subprocess.run(
        [sys.executable, "-m", "services.web", "--port", "0"],
        env=env_for(home),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert page.returncode == 1 and f"--server {service}" in page.stderr and "Traceback" not in page.stderr


# ------------------------------------------------------------------------------------------------
# Ctrl-C
# ------------------------------------------------------------------------------------------------


def interrupt_when(process: subprocess.Popen[str], marker: str) -> str:
    """Send SIGINT once ``marker`` shows on the process's stderr; all of stderr."""
    assert process.stderr is not None
    seen = ""
    while marker not in seen:
        chunk = process.stderr.read(1)
        if not chunk:
            break
        seen += chunk
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    return seen + rest


def test_ctrl_c_during_ingest_and_train_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = tmp_path / "data"
    write_synthetic("bach", data, slides=4, tiles_per_slide=16, seed=0, tile_size=TILE)
    make_baseline_artifact("random", home / "encoders" / "random", input_size=TILE)
    ingest = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "ingest",
            str(data),
            "--layout",
            "bach",
            "-e",
            "random",
            "--batch-size",
            "2",
        ],
        env=env_for(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said = interrupt_when(ingest, "ingesting bach")
    assert ingest.returncode == 130 and said.strip().splitlines()[-1].endswith(INTERRUPTED), said
    assert "Traceback" not in said
    before = make_baseline_artifact("random", home / "encoders" / "simclr", input_size=TILE)  # stands in
    digest = artifact_digest(before)
    train = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", "simclr", "--data", str(data), "--layout", "bach",
         "--steps", "500", "--batch-size", "4", "--input-size", "32", "--init", "random", "--force"],
        env=env_for(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    said = interrupt_when(train, "training simclr")
    last = said.strip().splitlines()[-1]
    assert train.returncode == 130 and "interrupted;" in last and "was left as it was" in last, said
    assert "Traceback" not in said and artifact_digest(before) == digest  # the old artifact, whole
    assert not [p for p in (home / "encoders").iterdir() if p.name.startswith(".")]  # no partial left


def test_ctrl_c_while_the_service_loads_is_one_line(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT reaches the main thread while it waits for the encoders to load."""
    import services.search.__main__ as service_main
    from services.search.server import SearchServer

    def interrupted(self: SearchServer, timeout: float | None = None) -> SearchEngine:
        raise KeyboardInterrupt

    monkeypatch.setenv("HISTO_HOME", str(home / "elsewhere"))
    get_settings.cache_clear()
    monkeypatch.setattr(SearchServer, "wait_ready", interrupted)
    try:
        assert service_main.main(["--port", "0"]) == 130
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["interrupted; rerun the same command to start again"]


# ------------------------------------------------------------------------------------------------
# One wording, three transports
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose random encoder was retrained after ingestion."""
    home = tmp_path_factory.mktemp("retrained")
    build_home(home)
    retrain(home / "encoders" / "random")
    return home


def test_refusals_read_the_same_in_process_over_grpc_and_on_the_page(retrained: Path) -> None:
    with EdgeStore(retrained / "index") as store:
        engine = SearchEngine.load(store, retrained / "encoders", tiling=TilingConfig(tile_size=TILE))
        assert engine.encoders == ["colorhist"] and "random" in engine.stale
        server, port = create_server(GrpcSettings(host="127.0.0.1", port=0), engine)
        server.start()
        page = WebServer(create_app(engine, max_upload_bytes=8 << 20)).start()
        vector, dims = [1.0] * 512, store.vectors()
        flt = SearchFilter("bracs", labels=("dcis",))
        cases = [
            ({"encoder": "random", "vector": [1.0] * dims["random"]}, StaleVectorsError, 409, "FAILED_PRECONDITION"),  # noqa: E501
            ({"encoder": "colorhist", "vector": vector, "filter": flt}, NoMatchError, 404, "NOT_FOUND"),
        ]  # fmt: skip
        try:
            with (
                SearchClient(f"127.0.0.1:{port}", timeout=60) as client,
                httpx.Client(base_url=page.url) as web,
            ):
                for kwargs, error, status, code in cases:
                    with pytest.raises(error) as here:
                        engine.search(**kwargs)  # type: ignore[arg-type]
                    with pytest.raises(error) as remote:
                        client.search(**kwargs)  # type: ignore[arg-type]
                    assert str(remote.value) == str(here.value)
                    assert remote.value.grpc_code == code  # type: ignore[attr-defined]
                    flt = kwargs.get("filter")
                    body = {"encoder": kwargs["encoder"], "vector": kwargs["vector"]}
                    if isinstance(flt, SearchFilter):
                        body |= {"dataset": flt.dataset, "labels": list(flt.labels)}
                    answer = web.post("/api/search", json=body)
                    assert answer.status_code == status
                    assert answer.json()["error"]["message"] == str(here.value)
                assert "did you mean 'DCIS'" in str(here.value)
                image = png(np.full((TILE, TILE, 3), 200, np.uint8))
                bad = web.post("/api/search", files={"image": ("q.png", image)}, data={"mpp": "-1"})
                assert bad.status_code == 422 and "mpp" in bad.json()["error"]["message"]
                with pytest.raises(InvalidInputError) as negative:
                    client.search(image=image, mpp=-1.0)
                assert negative.value.grpc_code == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
                assert "µm/px must be a positive number" in str(negative.value)
        finally:
            page.stop()
            server.stop(None).wait()


def test_a_worker_with_another_artifact_refuses_its_batch(retrained: Path) -> None:
    from workers.tasks import check_artifacts

    folder = retrained / "encoders" / "random"
    here = {"random": Embedder.from_artifact(folder)}
    check_artifacts(here, {"random": artifact_digest(folder)})  # the same artifact: fine
    with pytest.raises(StaleVectorsError, match="is not the one the job was queued with"):
        check_artifacts(here, {"random": "0123456789abcdef"})
