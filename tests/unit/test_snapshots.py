"""``histocli index snapshot`` / ``restore`` on the real embedded engine and on qdrant-client's local
mode: a snapshot restored after a drop gives the same hits and counts; the engine unpacks it as a
Qdrant shard snapshot; damaged or incompatible snapshots are one error and change nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
from typer.testing import CliRunner

from cli.main import app
from histo import __version__
from histo.encoders.artifact import artifact_digest
from histo.encoders.baselines import make_baseline_artifact
from histo.settings import get_settings
from histo.snapshots import create_snapshot, restore_snapshot
from histo.store import EdgeStore, Point, ServerStore
from histo.store.archive import MANIFEST_NAME, SnapshotWriter, verify
from tests.index_home import DIMS, build_home, hits, points_of

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    build_home(tmp_path / "home")
    monkeypatch.setenv("HISTO_HOME", str(tmp_path / "home"))
    for name in ("HISTO_QDRANT__URL", "HISTO_GRPC__TOKEN", "HISTO_QDRANT__COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def histocli(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def state(home: Path) -> tuple[dict[str, Any], list[list[tuple[str, float]]]]:
    with EdgeStore(home / "index") as store:
        return store.inventory(), hits(store)


def take(home: Path, out: Path) -> dict[str, Any]:
    result = histocli("index", "snapshot", str(out), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["manifest"]


def test_snapshot_drop_restore_gives_the_same_hits_and_counts(home: Path, tmp_path: Path) -> None:
    inventory, before = state(home)
    manifest = take(home, tmp_path / "backup.snapshot")
    assert manifest["kind"] == "edge-shard" and manifest["histo_version"] == __version__
    assert manifest["points"] == 400 and manifest["vectors"] == DIMS
    for key in ("vector_points", "datasets", "data_roots"):
        assert manifest[key] == inventory[key]
    assert manifest["data_roots"] == {
        "bach": ["/data/bach", "/old/bach"],
        "bracs": ["/data/bracs", "/old/bracs"],
    }
    assert manifest["datasets"]["bracs"]["vectors"]["other"] < manifest["datasets"]["bracs"]["points"]
    assert manifest["encoders"]["colorhist"]["digest"] == artifact_digest(home / "encoders" / "colorhist")

    assert histocli("index", "drop", "-y").exit_code == 0
    with EdgeStore(home / "index") as store:
        assert store.count() == 0
    restored = histocli("index", "restore", str(tmp_path / "backup.snapshot"), "-y")
    assert restored.exit_code == 0, restored.output
    assert "restored 400 points" in restored.output
    assert "encoder(s) other not under" in restored.output  # a warning, not an error
    after_inventory, after = state(home)
    assert after == before  # ids and scores, exactly
    assert after_inventory == inventory
    leftovers = [p.name for p in (home / "index").iterdir() if p.name.startswith(".re")]
    assert leftovers == []  # no staging or replaced folders stay behind


def test_the_engine_unpacks_a_snapshot_as_a_qdrant_shard_snapshot(home: Path, tmp_path: Path) -> None:
    manifest = take(home, tmp_path / "s.snapshot")
    qe.EdgeShard.unpack_snapshot(str(tmp_path / "s.snapshot"), str(tmp_path / "unpacked"))
    shard = qe.EdgeShard.load(str(tmp_path / "unpacked"))
    try:
        assert shard.info().points_count == manifest["points"] == 400
    finally:
        shard.close()
    apparent = sum(p.stat().st_size for p in (home / "index" / "histo").rglob("*") if p.is_file())
    assert (tmp_path / "s.snapshot").stat().st_size < apparent / 4  # preallocated holes are not stored


def test_sparse_members_round_trip_through_the_engine_and_python(tmp_path: Path) -> None:
    """Many holes (beyond the four sparse entries of the first header), a trailing hole, a file
    that is all hole, and a dense one: the engine's tar reader and Python's read them back."""
    source = tmp_path / "shard"
    (source / "segments").mkdir(parents=True)
    rng = random.Random(0)
    sparse = source / "holes.bin"
    with open(sparse, "wb") as file:
        file.truncate(40 << 20)
        for k in range(30):
            file.seek(k * (1 << 20) + rng.randrange(0, 4096))
            file.write(os.urandom(rng.randrange(1, 9000)))
    with open(source / "empty.bin", "wb") as file:
        file.truncate(8 << 20)
    (source / "dense.bin").write_bytes(os.urandom(5000))
    out = tmp_path / "holes.snapshot"
    with SnapshotWriter(out) as writer:
        for name in ("holes.bin", "empty.bin", "dense.bin"):
            writer.add_file(source / name, name)
        writer.add_dir("segments")
        writer.finish({"kind": "edge-shard", "vectors": {}, "points": 0})
    assert out.stat().st_size < (2 << 20)
    with tarfile.open(out) as tar:  # Python's reader (verify reads every member this way)
        assert tar.extractfile("holes.bin").read() == sparse.read_bytes()  # type: ignore[union-attr]
    qe.EdgeShard.unpack_snapshot(str(out), str(tmp_path / "back"))
    for name in ("holes.bin", "empty.bin", "dense.bin"):
        assert (tmp_path / "back" / name).read_bytes() == (source / name).read_bytes(), name


# ------------------------------------------------------------------------------------------------
# Bad snapshots: one error, nothing changed
# ------------------------------------------------------------------------------------------------


def rewrite_manifest(path: Path, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """Replace the manifest (the archive's last member) with ``change(manifest)``, or drop it."""
    with tarfile.open(path) as tar:
        member = tar.getmember(MANIFEST_NAME)
        manifest = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    new = change(manifest)
    with open(path, "r+b") as file:
        file.truncate(member.offset)
        file.seek(member.offset)
        if new is not None:
            data = json.dumps(new).encode()
            info = tarfile.TarInfo(MANIFEST_NAME)
            info.size = len(data)
            file.write(info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512))
        file.write(bytes(1024))


def truncate(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(3).bytes(300_000))


def flip_a_byte(path: Path) -> None:
    with tarfile.open(path) as tar:
        data = [m for m in tar if m.isfile() and not m.issparse() and m.name != MANIFEST_NAME]
        member = max(data, key=lambda m: m.size)
        where = member.offset_data + member.size // 2
    with open(path, "r+b") as file:
        file.seek(where)
        byte = file.read(1)
        file.seek(where)
        file.write(bytes([byte[0] ^ 0xFF]))


def another_vector_size(path: Path) -> None:
    rewrite_manifest(path, lambda m: {**m, "vectors": {**m["vectors"], "other": 32}})


def no_manifest(path: Path) -> None:
    rewrite_manifest(path, lambda m: None)


def a_newer_format(path: Path) -> None:
    rewrite_manifest(path, lambda m: {**m, "format_version": 99})


def counts_that_lie(path: Path) -> None:
    rewrite_manifest(path, lambda m: {**m, "points": m["points"] + 1})


BAD: dict[Callable[[Path], None], str] = {
    truncate: "may be truncated or damaged",
    random_bytes: "may be truncated or damaged",
    flip_a_byte: "does not match its checksum",
    another_vector_size: "the index inside has",
    no_manifest: f"has no {MANIFEST_NAME}",
    a_newer_format: "snapshot format 99",
    counts_that_lie: "the index inside has points 400",
}


@pytest.mark.parametrize("damage", list(BAD), ids=[f.__name__ for f in BAD])
def test_a_bad_snapshot_is_one_error_and_leaves_the_index_as_it_was(
    home: Path, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = tmp_path / "bad.snapshot"
    take(home, path)
    with EdgeStore(home / "index") as store:  # the index moves on after the snapshot
        store.drop()
    build_home(home, points=250, seed=5)
    before = state(home)
    damage(path)
    result = histocli("index", "restore", str(path), "-y")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and result.output.strip().count("\n") == 0, result.output
    assert BAD[damage] in result.output and "Traceback" not in result.output
    assert state(home) == before
    assert sorted(p.name for p in (home / "index").iterdir()) == [".histo-store.lock", "histo"]


def test_a_snapshot_for_other_encoders_is_refused(home: Path, tmp_path: Path) -> None:
    """The snapshot is sound, but the colorhist encoder here makes other vectors than its own."""
    other = tmp_path / "other"
    with EdgeStore(other / "index") as store:
        store.ensure_vectors({"colorhist": 8})
        store.upsert(
            Point(f"00000000-0000-4000-8000-{k:012d}", {"colorhist": np.ones(8) + k}, {}) for k in range(3)
        )
        create_snapshot(store, tmp_path / "eight.snapshot", other / "encoders")
    before = state(home)
    result = histocli("index", "restore", str(tmp_path / "eight.snapshot"), "-y")
    assert result.exit_code == 1
    assert "holds 8-d 'colorhist' vectors, but the encoder 'colorhist' here" in result.output
    assert "makes 512-d ones" in result.output
    assert state(home) == before


def test_an_encoder_that_changed_since_the_snapshot_is_a_warning(home: Path, tmp_path: Path) -> None:
    take(home, tmp_path / "s.snapshot")
    make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=96)  # made anew
    with EdgeStore(home / "index") as store:
        restored = restore_snapshot(store, tmp_path / "s.snapshot", home / "encoders")
    assert any("not the artifact the snapshot was taken beside" in w for w in restored.warnings)


def test_a_snapshot_is_never_written_over(home: Path, tmp_path: Path) -> None:
    take(home, tmp_path / "s.snapshot")
    again = histocli("index", "snapshot", str(tmp_path / "s.snapshot"))
    assert again.exit_code == 1 and "exists; give a new file name or a folder" in again.output
    folder = histocli("index", "snapshot", str(tmp_path), "--json")
    assert folder.exit_code == 0, folder.output
    written = Path(json.loads(folder.output)["path"])
    assert written.parent == tmp_path and written.name.startswith("histo-") and written.suffix == ".snapshot"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


# ------------------------------------------------------------------------------------------------
# A server collection (qdrant-client's local mode): the portable "points" snapshot
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def server_store(home: Path) -> Iterator[ServerStore]:
    with EdgeStore(home / "index") as edge:
        records = list(edge.scroll(with_vectors=True))
    with ServerStore.in_memory() as server:
        server.ensure_vectors(DIMS)
        server.upsert(Point(r.id, r.vectors, r.payload) for r in records)
        yield server


def test_a_server_collection_snapshot_restores_the_same_points_and_hits(
    server_store: ServerStore, home: Path, tmp_path: Path
) -> None:
    inventory, points, before = server_store.inventory(), points_of(server_store), hits(server_store)
    taken = create_snapshot(server_store, tmp_path / "server.snapshot", home / "encoders")
    assert taken.manifest["kind"] == "points" and verify(taken.path)["points"] == 400
    server_store.drop()
    restore_snapshot(server_store, taken.path, home / "encoders")
    assert server_store.inventory() == inventory
    # local mode divides every vector by its norm again on upsert: the last bit may move
    again = points_of(server_store)
    assert {pid: payload for pid, (payload, _) in again.items()} == {pid: p for pid, (p, _) in points.items()}
    after = hits(server_store)
    assert [[pid for pid, _ in found] for found in after] == [[pid for pid, _ in found] for found in before]
    assert np.allclose([s for f in after for _, s in f], [s for f in before for _, s in f], atol=1e-6)


def test_snapshots_cross_backends(server_store: ServerStore, home: Path, tmp_path: Path) -> None:
    """An embedded snapshot restores into a server collection, a server's into the embedded index."""
    with EdgeStore(home / "index") as edge:
        shard = create_snapshot(edge, tmp_path / "edge.snapshot", home / "encoders")
        points = points_of(edge)
    server_store.drop()
    restore_snapshot(server_store, shard.path, home / "encoders")
    assert server_store.inventory()["datasets"] == shard.manifest["datasets"]
    portable = create_snapshot(server_store, tmp_path / "server.snapshot", home / "encoders")
    with EdgeStore(home / "index") as edge:
        edge.drop()
        restore_snapshot(edge, portable.path, home / "encoders")
        assert edge.inventory()["vector_points"] == shard.manifest["vector_points"]
        assert {pid: p for pid, (p, _) in points_of(edge).items()} == {
            pid: p for pid, (p, _) in points.items()
        }


def test_a_snapshot_taken_while_something_writes_is_refused(
    server_store: ServerStore, tmp_path: Path
) -> None:
    scroll = server_store.scroll

    def writing_meanwhile(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from scroll(*args, **kwargs)
        server_store.upsert([Point("00000000-0000-4000-8000-000000000001", {"other": np.ones(16)}, {})])

    server_store.scroll = writing_meanwhile  # type: ignore[method-assign]
    with pytest.raises(Exception, match="changed while the snapshot was taken"):
        create_snapshot(server_store, tmp_path / "moving.snapshot", tmp_path)
    assert not (tmp_path / "moving.snapshot").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_restore_needs_the_index_to_itself(home: Path, tmp_path: Path) -> None:
    take(home, tmp_path / "s.snapshot")
    with EdgeStore(home / "index"):
        result = histocli("index", "restore", str(tmp_path / "s.snapshot"), "-y")
    assert result.exit_code == 1 and "a restore replaces the index, so stop it first" in result.output


def test_snapshot_time_is_reported(home: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    result = histocli("index", "snapshot", str(tmp_path / "t.snapshot"))
    assert result.exit_code == 0, result.output
    assert "400 points, edge-shard) in" in result.output and "MiB" in result.output
    assert time.perf_counter() - started < 60
    shutil.copy(tmp_path / "t.snapshot", tmp_path / "copy.snapshot")
    assert verify(tmp_path / "copy.snapshot")["points"] == 400
