"""The bad-input matrix of ``tests/bad_inputs.py`` uploaded to a real gRPC ``Search``.

A server on a free loopback port serves an index of the matrix's decodable images (colorhist and
random, every grid tile). Each broken upload must be refused with the status of the error table
(``services/search/errors.py``): INVALID_ARGUMENT with a one-line reason, or RESOURCE_EXHAUSTED for
the decompression bomb, which that table maps so; never INTERNAL or UNKNOWN. Each convertible
upload must return hits, its own tiles first: the upload is decoded exactly as ingestion decoded
the file (mode, bit depth, EXIF orientation). Files without bytes (a broken link, a mode-000 file)
exist only on disk and are covered by ``tests/unit/test_bad_inputs.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from histo.client import SearchClient
from histo.data.datasets import scan_dataset
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.encoders.baselines import make_baseline_artifact
from histo.errors import HistoError
from histo.ingest import Ingestor, ingest
from histo.rpc.v1 import search_pb2, search_pb2_grpc
from histo.search import SearchEngine
from histo.settings import GrpcSettings
from histo.store import EdgeStore
from services.search.server import create_server
from tests.bad_inputs import MAX_PIXELS, TILE, Case, matrix, write_matrix

pytestmark = pytest.mark.integration

ENCODERS = ("colorhist", "random")
TILING = TilingConfig(tile_size=TILE, min_tissue=0.0)
UPLOADS = [c for c in matrix() if c.uploadable]


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A server over an index of the matrix's decodable images; yields its port."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("home")
    write_matrix(home / "data", [c for c in matrix() if c.outcome == "ingested"])
    for name in ENCODERS:
        make_baseline_artifact(name, home / "encoders" / name, input_size=TILE)
    embedders = {n: Embedder.from_artifact(home / "encoders" / n, device="cpu") for n in ENCODERS}
    with EdgeStore(home / "index") as store:
        records = scan_dataset(home / "data", "folder").records
        ingest(records, Ingestor(store, embedders), TILING, MAX_PIXELS, num_workers=0, progress=False)
        engine = SearchEngine(store, embedders, tiling=TILING, max_pixels=MAX_PIXELS)
        server, bound = create_server(GrpcSettings(host="127.0.0.1", port=0), engine, max_workers=2)
        server.start()
        try:
            yield bound
        finally:
            server.stop(None).wait()
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(port: int) -> Iterator[SearchClient]:
    with SearchClient(f"127.0.0.1:{port}", timeout=60) as c:
        yield c


@pytest.mark.parametrize("case", [c for c in UPLOADS if c.outcome == "ingested"], ids=lambda c: c.name)
def test_convertible_uploads_find_their_own_tiles(client: SearchClient, case: Case) -> None:
    result = client.search(image=case.data, encoder="random", top_k=5)
    assert result.hits and result.encoder == "random"
    own = [h for h in result.hits if h.payload["path"] == case.rel_path]
    assert own and max(h.score for h in own) > 0.999


@pytest.mark.parametrize("case", [c for c in UPLOADS if c.outcome == "reported"], ids=lambda c: c.name)
def test_bad_uploads_are_refused_with_one_line(client: SearchClient, case: Case) -> None:
    with pytest.raises(HistoError) as caught:
        client.search(image=case.data, top_k=3)
    message = str(caught.value)
    assert caught.value.grpc_code == case.upload_code  # type: ignore[attr-defined]
    assert case.upload_reason in message and "\n" not in message


@pytest.mark.parametrize("case", [c for c in UPLOADS if c.outcome == "reported"], ids=lambda c: c.name)
def test_raw_status_is_never_internal_or_unknown(port: int, case: Case) -> None:
    """The bare wire status, without histo's client in between."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as caught:
        search_pb2_grpc.SearchServiceStub(channel).Search(
            search_pb2.SearchRequest(image=case.data), timeout=60
        )
    code = caught.value.code()  # type: ignore[attr-defined]
    assert code.name == case.upload_code
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    assert "\n" not in caught.value.details()  # type: ignore[attr-defined]
