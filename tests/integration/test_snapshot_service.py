"""A snapshot while ``histocli serve`` owns the embedded index: ``histocli index snapshot`` cannot
open the index, asks the running service (``CreateSnapshot``), which takes it under the store's
lock and streams it; the file restores to the same index. Only loopback clients, or holders of
the token, may ask."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.client import SearchClient
from histo.settings import get_settings
from histo.snapshots import restore_snapshot
from histo.store import EdgeStore
from histo.store.archive import verify
from services.search.servicer import is_loopback
from tests.index_home import build_home, hits

runner = CliRunner()
TOKEN = "snapshot-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, subprocess.Popen[str]]]:
    """A built HISTO_HOME served by a real ``python -m services.search`` (with a token)."""
    home = build_home(tmp_path_factory.mktemp("served") / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTO_")}
    env.update({"HISTO_HOME": str(home), "HISTO_GRPC__TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen(
        [sys.executable, "-m", "services.search", "--port", "0", "--torch-threads", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line + (process.stdout.read() if process.poll() is not None else "")
        address = f"127.0.0.1:{match.group(1)}"
        with SearchClient(address, token=TOKEN) as client:
            client.wait_ready(120)
        yield home, address, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def settings_env(
    served: tuple[Path, str, subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    home, address, _ = served
    monkeypatch.setenv("HISTO_HOME", str(home))
    monkeypatch.setenv("HISTO_GRPC__PORT", address.rsplit(":", 1)[1])
    monkeypatch.setenv("HISTO_GRPC__TOKEN", TOKEN)
    monkeypatch.delenv("HISTO_QDRANT__URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_snapshot_while_serving_goes_through_the_service(
    served: tuple[Path, str, subprocess.Popen[str]], settings_env: None, tmp_path: Path
) -> None:
    home, address, process = served
    result = runner.invoke(
        app, ["index", "snapshot", str(tmp_path / "live.snapshot")], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    assert f"the search service at {address} took the snapshot" in result.output
    assert "400 points, edge-shard" in result.output
    manifest = verify(tmp_path / "live.snapshot")
    assert manifest["source"] == str(home / "index") and manifest["encoders"]["colorhist"]["digest"]
    assert process.poll() is None  # still serving
    assert not any((home / "snapshots").glob(".sending-*"))  # the service's copy is gone once sent

    explicit = runner.invoke(
        app, ["index", "snapshot", str(tmp_path / "named.snapshot"), "--server", address]
    )
    assert explicit.exit_code == 0, explicit.output

    copy = tmp_path / "copy"
    build_home(copy, points=10, seed=9)
    with EdgeStore(copy / "index") as restored:
        restore_snapshot(restored, tmp_path / "live.snapshot", copy / "encoders")
        assert restored.count() == 400
        found = hits(restored, exact=True)
    same = build_home(tmp_path / "same")  # the served home, built again from the same seed
    with EdgeStore(same / "index") as original:
        assert hits(original, exact=True) == found


def test_a_wrong_token_gets_no_snapshot(
    served: tuple[Path, str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    from histo.client import AuthenticationError

    _, address, _ = served
    with SearchClient(address, token="wrong") as client, pytest.raises(AuthenticationError):
        client.snapshot(tmp_path / "nope.snapshot")
    assert list(tmp_path.iterdir()) == []


def test_only_loopback_peers_count_as_this_machine() -> None:
    assert is_loopback("ipv4:127.0.0.1:50000") and is_loopback("ipv6:[::1]:50000") and is_loopback("unix:/s")
    assert not is_loopback("ipv4:10.0.0.5:50000") and not is_loopback("ipv6:[2001:db8::1]:1")


def test_without_a_token_a_loopback_client_may_ask(tmp_path: Path) -> None:
    from histo.search import SearchEngine
    from histo.settings import GrpcSettings
    from histo.snapshots import SnapshotTaker
    from services.search.server import create_server

    home = build_home(tmp_path / "home", points=50)
    with EdgeStore(home / "index") as store:
        taker = SnapshotTaker(store, home / "encoders", home / "snapshots")
        engine = SearchEngine.load(store, home / "encoders", warm_up=False)
        server, port = create_server(GrpcSettings(port=0), engine, snapshots=taker)
        server.start()
        try:
            with SearchClient(f"127.0.0.1:{port}") as client:
                client.snapshot(tmp_path / "loopback.snapshot")
        finally:
            server.stop(0).wait()
    assert verify(tmp_path / "loopback.snapshot")["points"] == 50
