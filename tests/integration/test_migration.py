"""``histocli index migrate`` between the real embedded engine and a Qdrant server API: qdrant-client's
local mode in-process, and the loopback stand-in server (``qdrant_standin.py``) reached over HTTP by
a real ``histocli`` process that is killed with SIGKILL midway and then run again. Every copy must
hold the same ids, payloads and vectors (bit for bit as the destination stores what it is given)
and answer the same searches, through the engine ``histocli serve`` runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.migration import Checkpoint, MigrationError, checkpoint_path, migrate
from histo.search import SearchEngine
from histo.settings import get_settings
from histo.store import EdgeStore, Point, ServerStore, VectorStore
from tests.index_home import DIMS, build_home, hits, points_of
from tests.integration.qdrant_standin import StoredQdrant

POINTS = 400
BATCH = 40
runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:Local mode performs exact")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_home(tmp_path_factory.mktemp("built") / "home", points=POINTS)


@pytest.fixture
def home(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh copy of the built HISTO_HOME, set for in-process ``histocli`` calls."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(built, home)
    monkeypatch.setenv("HISTO_HOME", str(home))
    for name in ("HISTO_QDRANT__URL", "HISTO_GRPC__TOKEN", "HISTO_QDRANT__COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def direct_copy(source: VectorStore) -> ServerStore:
    """What local mode stores when handed the source's points directly: the reference the
    migrated copy is compared with bit for bit (local mode re-normalises every vector)."""
    reference = ServerStore.in_memory("reference")
    reference.ensure_vectors(source.vectors())
    reference.upsert(Point(r.id, r.vectors, r.payload) for r in source.scroll(with_vectors=True))
    return reference


def same_search_results(a: VectorStore, b: VectorStore) -> None:
    """The same ids in the same order for exact searches; scores equal to float32 precision."""
    found_a, found_b = hits(a, exact=True), hits(b, exact=True)
    assert [[pid for pid, _ in f] for f in found_a] == [[pid for pid, _ in f] for f in found_b]
    assert np.allclose([s for f in found_a for _, s in f], [s for f in found_b for _, s in f], atol=1e-6)


def same_served_hits(a: VectorStore, b: VectorStore, encoders: Path) -> None:
    """``histocli serve``'s engine over each store: the same hits for queries by stored point."""
    engines = [SearchEngine.load(store, encoders, warm_up=False) for store in (a, b)]
    for record in list(a.scroll())[:: POINTS // 5]:
        results = [e.search(point_id=record.id, encoder="colorhist", top_k=8, exact=True) for e in engines]
        assert [h.id for h in results[0].hits] == [h.id for h in results[1].hits]
        assert [h.payload for h in results[0].hits] == [h.payload for h in results[1].hits]


class Failing:
    """Makes ``store.upsert`` fail after ``pages`` calls, as a lost connection would."""

    def __init__(self, store: VectorStore, pages: int) -> None:
        self.store, self.left, self.upsert = store, pages, store.upsert

    def __enter__(self) -> Failing:
        def upsert(points: Any) -> int:
            if self.left == 0:
                raise ConnectionError("the server went away (injected)")
            self.left -= 1
            return self.upsert(points)

        self.store.upsert = upsert  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.upsert = self.upsert  # type: ignore[method-assign]


def test_to_local_mode_fails_midway_then_resumes_to_identical_points(home: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ck.json"
    with EdgeStore(home / "index") as edge, ServerStore.in_memory() as server:
        with Failing(server, pages=3), pytest.raises(ConnectionError, match="injected"):
            migrate(edge, server, checkpoint, batch=BATCH)
        state = Checkpoint.load(checkpoint)
        assert state is not None and state.copied == 3 * BATCH and not state.finished
        assert server.count() == 3 * BATCH

        result = migrate(edge, server, checkpoint, batch=BATCH)
        assert (result.resumed_from, result.copied) == (3 * BATCH, POINTS - 3 * BATCH)
        check = result.verification
        assert check.ok and check.sampled == 256 and check.identical + check.renormalised == 256
        assert not checkpoint.exists()
        assert server.inventory() == {**edge.inventory(), "collection": server.collection}
        with direct_copy(edge) as reference:
            assert points_of(server) == points_of(reference)  # ids, payloads, vector bits
        same_search_results(edge, server)
        same_served_hits(edge, server, home / "encoders")


def test_from_local_mode_into_the_embedded_index_keeps_every_bit(home: Path, tmp_path: Path) -> None:
    """The reverse direction: the embedded engine stores a unit vector as given, so the copy is
    the server's points bit for bit; interrupted once and resumed."""
    with EdgeStore(home / "index") as edge, ServerStore.in_memory() as server:
        migrate(edge, server, tmp_path / "there.json", batch=100)
    with ServerStore.in_memory() as server:
        with EdgeStore(home / "index") as edge:
            server.ensure_vectors(DIMS)
            server.upsert(Point(r.id, r.vectors, r.payload) for r in edge.scroll(with_vectors=True))
        with EdgeStore(tmp_path / "second" / "index") as second:
            checkpoint = checkpoint_path(tmp_path, server, second)
            with Failing(second, pages=2), pytest.raises(ConnectionError):
                migrate(server, second, checkpoint, batch=BATCH)
            result = migrate(server, second, checkpoint, batch=BATCH)
            assert result.resumed_from == 2 * BATCH
            assert result.verification.identical == 256 and result.verification.renormalised == 0
            assert points_of(second) == points_of(server)
            same_search_results(server, second)
            same_served_hits(server, second, home / "encoders")


def test_a_copy_that_does_not_match_is_an_error_and_starts_over(home: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ck.json"
    with EdgeStore(home / "index") as edge, ServerStore.in_memory() as server:
        original = server.upsert

        def lossy(points: Any) -> int:  # a destination that drops one payload field
            return original([Point(p.id, p.vectors, {**p.payload, "x": -1}) for p in points])

        server.upsert = lossy  # type: ignore[method-assign]
        with pytest.raises(MigrationError, match="payload differs"):
            migrate(edge, server, checkpoint, batch=100)
        state = Checkpoint.load(checkpoint)
        assert state is not None and state.copied == 0 and state.next_offset is None


def histocli(home: Path, *args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update({"HISTO_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_histocli_migrate_to_the_standin_killed_and_resumed(home: Path) -> None:
    with StoredQdrant() as server:
        server.pause_after_upserts(3)
        first = histocli(home, "index", "migrate", "--to", server.url, "--batch", str(BATCH))
        try:
            assert server.paused.wait(120), first.communicate(timeout=5)
            first.send_signal(signal.SIGKILL)  # mid-copy, with the fourth page on its way
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        server.release()  # the page in flight lands after all: resuming must cope with it
        assert first.returncode == -signal.SIGKILL
        with EdgeStore(home / "index") as edge, ServerStore.connect(server.url) as remote:
            checkpoint = checkpoint_path(home / "migrations", edge, remote)
        state = Checkpoint.load(checkpoint)
        assert state is not None and state.copied == 3 * BATCH and not state.finished

        second = histocli(home, "index", "migrate", "--to", server.url, "--batch", str(BATCH))
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
        assert f"copied {POINTS - 3 * BATCH} points (resumed after {3 * BATCH})" in out, out
        assert "verified: the same counts per data set and encoder, 256 sampled points" in out
        assert not checkpoint.exists()

        with (
            EdgeStore(home / "index") as edge,
            ServerStore.connect(server.url) as remote,
            direct_copy(edge) as reference,
        ):
            assert remote.inventory() == edge.inventory()
            assert points_of(remote) == points_of(reference)
            same_search_results(edge, remote)
            same_served_hits(edge, remote, home / "encoders")
        assert ("PUT", "/collections/histo/points") in {(r.method, r.path) for r in server.requests}


def test_histocli_migrate_from_the_standin_into_an_empty_home(home: Path, tmp_path: Path) -> None:
    with StoredQdrant() as server:
        with EdgeStore(home / "index") as edge, ServerStore.connect(server.url) as remote:
            migrate(edge, remote, tmp_path / "ck.json")
        empty = tmp_path / "empty"
        build_home(empty, points=0)
        result = runner.invoke(
            app, ["index", "migrate", "--from", server.url, "--json"], env={"HISTO_HOME": str(empty)}
        )
        get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        figures = json.loads(result.output[result.output.index("{") :])
        assert figures["points"] == POINTS and figures["identical"] == 256 and figures["renormalised"] == 0
        with EdgeStore(empty / "index") as copy, ServerStore.connect(server.url) as remote:
            assert points_of(copy) == points_of(remote)
            same_search_results(remote, copy)


def test_migrate_refuses_what_it_cannot_do_safely(home: Path) -> None:
    with StoredQdrant() as server:
        both = runner.invoke(app, ["index", "migrate", "--to", server.url, "--from", server.url])
        assert both.exit_code == 1 and "give exactly one of --to URL" in both.output
        with ServerStore.connect(server.url) as remote:
            remote.ensure_vectors({"other": 16})
            remote.upsert([Point("00000000-0000-4000-8000-000000000001", {"other": np.ones(16)}, {})])
        full = runner.invoke(app, ["index", "migrate", "--to", server.url])
        assert full.exit_code == 1 and "already holds 1 points" in full.output
        assert "--collection NAME" in full.output
        with EdgeStore(home / "index"):
            busy = runner.invoke(app, ["index", "migrate", "--to", server.url, "--collection", "other"])
        assert busy.exit_code == 1 and "is already open in this process" in busy.output
