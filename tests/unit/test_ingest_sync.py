"""File stamps, ``ingest --sync`` and ``index prune``: exactly the edited files are re-embedded, exactly
the deleted ones removed, a touched file is only restamped, and nothing goes without a report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.data import filestamp
from histo.data.datasets import scan_dataset
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.ingest import Ingestor, IngestSummary, ingest
from histo.jobs import TileBatch, plan_batches, process_batch
from histo.settings import get_settings
from histo.store import EdgeStore, Point, SearchFilter
from histo.sync import SyncPlan, SyncResult, plan_sync, settle
from tests.helpers import AS_FOLDER, baseline_embedders, write_image

runner = CliRunner()
TILING = TilingConfig(tile_size=32)
#: Every image is 64 x 48 px: two 32 px tiles side by side. ``edit.png`` becomes 40 x 48: one tile.
FILES = {"a/keep.png": 1, "a/edit.png": 2, "b/gone.png": 3, "b/touch.png": 4}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Embedder]:
    return baseline_embedders(tmp_path_factory.mktemp("encoders"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel_path, seed in FILES.items():
        write_image(root / rel_path, seed=seed)
    return root


def change_files(root: Path) -> None:
    """Delete one file, edit another (new pixels, one tile fewer), touch a third (same bytes)."""
    (root / "b" / "gone.png").unlink()
    write_image(root / "a" / "edit.png", width=40, seed=9)
    touched = root / "b" / "touch.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))


def by_path(store: EdgeStore) -> dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]]:
    """path -> point id -> (payload, vectors)."""
    found: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {}
    for record in store.scroll(with_vectors=True):
        found.setdefault(record.payload["path"], {})[record.id] = (record.payload, record.vectors)
    return found


def run(
    store: EdgeStore,
    root: Path,
    encoders: dict[str, Embedder],
    sync: bool = False,
    tiling: TilingConfig = TILING,
) -> tuple[IngestSummary, SyncPlan | None, SyncResult | None]:
    """Ingest ``root`` (with ``sync``: planned, then settled, as ``histocli ingest --sync`` does)."""
    scan = scan_dataset(root, "folder")
    plan = plan_sync(store, "folder", scan.root, scan.records) if sync else None
    summary = ingest(
        plan.records if plan else scan.records, Ingestor(store, encoders), tiling, 10**8, 0, False
    )
    result = settle(store, plan, (p.path for p in summary.failed)) if plan else None
    return summary, plan, result


def test_every_tile_records_its_files_size_mtime_and_hash(
    folder: Path, encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    with EdgeStore(tmp_path / "index") as store:
        summary, _, _ = run(store, folder, encoders)
        assert (summary.tiles, summary.embedded) == (8, 8)
        for path, points in by_path(store).items():
            file = folder / path
            expected = {
                "file_size": file.stat().st_size,
                "file_mtime_us": file.stat().st_mtime_ns // 1000,
                "file_hash": "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest(),
            }
            assert len(points) == 2
            assert all({k: p[k] for k in expected} == expected for p, _ in points.values())


def test_sync_removes_and_reembeds_exactly_the_deleted_and_edited_files(
    folder: Path, encoders: dict[str, Embedder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EdgeStore(tmp_path / "index") as store:
        run(store, folder, encoders)
        before = by_path(store)
        change_files(folder)
        hashed: list[str] = []
        real_hash = filestamp.hash_file

        def counted_hash(path: Path) -> str:
            hashed.append(path.name)
            return real_hash(path)

        monkeypatch.setattr(filestamp, "hash_file", counted_hash)
        summary, plan, result = run(store, folder, encoders, sync=True)
        assert plan is not None and result is not None
        assert plan.states == {
            "a/edit.png": "changed",
            "a/keep.png": "unchanged",
            "b/touch.png": "touched",
        }
        assert sorted(hashed) == ["edit.png", "touch.png"]  # the quick check spared keep.png
        assert [f.rel_path for f in plan.gone] == ["b/gone.png"] and plan.gone_points == 2
        assert (summary.embedded, summary.skipped) == (1, 4)  # the edited file's one tile, no more
        assert (result.gone_removed, result.stale_removed, result.kept_failed) == (2, 1, [])
        after = by_path(store)
        assert set(after) == {"a/keep.png", "a/edit.png", "b/touch.png"} and store.count() == 5
        assert after["a/keep.png"] == before["a/keep.png"]
        for pid, (payload, vectors) in after["b/touch.png"].items():
            old_payload, old_vectors = before["b/touch.png"][pid]
            assert vectors == old_vectors and payload["file_hash"] == old_payload["file_hash"]
            assert payload["file_mtime_us"] == old_payload["file_mtime_us"] + 5 * 10**6
        ((edited_id, (edited, vectors)),) = after["a/edit.png"].items()
        assert edited_id in before["a/edit.png"]  # the same box: rewritten in place
        assert edited["file_hash"] != before["a/edit.png"][edited_id][0]["file_hash"]
        assert not np.allclose(vectors["colorhist"], before["a/edit.png"][edited_id][1]["colorhist"])

        hashed.clear()
        summary, plan, result = run(store, folder, encoders, sync=True)
        assert plan is not None and result is not None
        assert set(plan.states.values()) == {"unchanged"} and hashed == [] and not plan.gone
        assert (summary.embedded, result.removed, result.restamped_leftovers) == (0, 0, 0)
        assert by_path(store) == after


def test_a_changed_file_that_cannot_be_read_keeps_its_points(
    folder: Path, encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    with EdgeStore(tmp_path / "index") as store:
        run(store, folder, encoders)
        (folder / "a" / "edit.png").write_bytes(b"truncated in the middle of an edit")
        summary, plan, result = run(store, folder, encoders, sync=True)
        assert plan is not None and result is not None and plan.states["a/edit.png"] == "changed"
        assert [Path(p.path).name for p in summary.failed] == ["edit.png"]
        assert result.kept_failed == ["a/edit.png"] and result.stale_removed == 0
        assert len(by_path(store)["a/edit.png"]) == 2


def test_points_from_before_file_stamps_are_stamped_not_reembedded(
    folder: Path, encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    with EdgeStore(tmp_path / "index") as store:
        run(store, folder, encoders)
        legacy = [
            Point(r.id, payload={k: v for k, v in r.payload.items() if not k.startswith("file_")})
            for r in store.scroll()
        ]
        store.upsert(legacy)
        before = {r.id: r.vectors for r in store.scroll(with_vectors=True)}
        # a coarser tiling this time: one new 64 px tile per file; the old 32 px points are not cut
        summary, plan, result = run(store, folder, encoders, sync=True, tiling=TilingConfig(tile_size=64))
        assert plan is not None and result is not None
        assert set(plan.states.values()) == {"unstamped"} and summary.embedded == 4
        assert (result.restamped_leftovers, result.removed) == (8, 0)
        after = {r.id: r for r in store.scroll(with_vectors=True)}
        assert all(after[i].vectors == vectors for i, vectors in before.items())
        assert len(after) == 12 and all("file_hash" in r.payload for r in after.values())


def test_worker_batches_carry_the_stamps_into_the_payload(
    folder: Path, encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    """The queue path: stamped records travel in the task's JSON and the worker writes them."""
    records = filestamp.stamp_records(scan_dataset(folder, "folder").records)
    plan = plan_batches(records, TILING, 10**8, tiles_per_batch=4)
    with EdgeStore(tmp_path / "index") as store:
        for batch in plan.batches:
            process_batch(
                TileBatch.from_dict(json.loads(json.dumps(batch.to_dict()))),
                Ingestor(store, encoders),
                TILING,
                10**8,
            )
        stamps = {r.payload["path"]: r.payload["file_hash"] for r in store.scroll()}
    assert stamps == {r.rel_path: r.file_hash for r in records} and len(stamps) == 4


def cli_ingest(root: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """``histocli ingest ROOT -d folder --json``: the figures and what went to stderr."""
    args = [
        "ingest",
        str(root),
        *AS_FOLDER,
        "-e",
        "colorhist",
        "--workers",
        "0",
        "--tile-size",
        "32",
    ]
    result = runner.invoke(app, [*args, "--json", *extra])
    assert result.exit_code == 0, result.output
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures, result.stderr


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("HISTO_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_cli_sync_reports_what_it_removed_and_reembedded(folder: Path, home: Path) -> None:
    assert cli_ingest(folder)[0]["embedded"] == 8
    change_files(folder)
    figures, report = cli_ingest(folder, "--sync")
    assert "1 files unchanged, 1 touched (same bytes: restamped), 1 changed (re-embedded), 0 new" in report
    assert "1 gone: 2 points to remove" in report and "gone: b/gone.png (2 points)" in report
    assert figures["embedded"] == 1
    assert figures["sync"] == {
        "files": {"unchanged": 1, "touched": 1, "changed": 1, "new": 0, "unstamped": 0},
        "gone": ["b/gone.png"],
        "gone_removed": 2,
        "stale_removed": 1,
        "restamped_leftovers": 0,
        "kept_failed": [],
        "elsewhere": 0,
    }
    assert (home / "logs" / "gone-folder.tsv").read_text().endswith("/b/gone.png\t2\n")
    stats = json.loads(runner.invoke(app, ["index", "stats", "--json"]).stdout)
    assert stats["points"] == 5
    text = runner.invoke(app, ["ingest", str(folder), "--layout", "folder", "--sync", "--queue"])
    assert text.exit_code == 1 and "--sync runs in this process" in text.output


def test_cli_prune_reports_first_and_dry_run_removes_nothing(folder: Path, home: Path) -> None:
    cli_ingest(folder)
    (folder / "b" / "gone.png").unlink()
    (folder / "a" / "keep.png").unlink()
    dry = runner.invoke(app, ["index", "prune", "-d", "folder", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "4 files indexed, 2 gone from disk (4 points); dry run, nothing removed" in dry.output
    assert "gone: a/keep.png (2 points)" in dry.output and "gone: b/gone.png (2 points)" in dry.output
    assert json.loads(runner.invoke(app, ["index", "stats", "--json"]).stdout)["points"] == 8
    done = runner.invoke(app, ["index", "prune", "-d", "folder", "--json"])
    assert done.exit_code == 0, done.output
    figures = json.loads(done.stdout)
    assert (figures["gone"], figures["removed"]) == (["a/keep.png", "b/gone.png"], 4)
    assert "2 gone from disk" in done.stderr  # the report came before the removal
    assert json.loads(runner.invoke(app, ["index", "stats", "--json"]).stdout)["points"] == 4
    typo = runner.invoke(app, ["index", "prune", "-d", "bracs"])
    assert typo.exit_code == 1 and "no data set 'bracs' in the index; it holds: folder (4)" in typo.output


def test_prune_keeps_files_whose_whole_folder_is_missing_unless_told(folder: Path, home: Path) -> None:
    cli_ingest(folder)
    shutil.move(folder, folder.with_name("unmounted"))
    kept = runner.invoke(app, ["index", "prune", "-d", "folder"])
    assert (
        kept.exit_code == 0
        and "kept 4 files under" in kept.output
        and "that folder is missing" in kept.output
    )
    assert "removed 0 points of 0 files" in kept.output
    gone = json.loads(
        runner.invoke(app, ["index", "prune", "-d", "folder", "--missing-roots", "--json"]).stdout
    )
    assert gone["removed"] == 8
    assert json.loads(runner.invoke(app, ["index", "stats", "--json"]).stdout)["points"] == 0


def test_sync_leaves_the_files_of_another_folder_of_the_same_data_set(
    folder: Path, encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    write_image(other / "c" / "elsewhere.png", seed=7)
    with EdgeStore(tmp_path / "index") as store:
        run(store, other, encoders)
        run(store, folder, encoders)
        _, plan, result = run(store, folder, encoders, sync=True)
        assert plan is not None and result is not None
        assert plan.elsewhere == 1 and not plan.gone and result.removed == 0
        assert store.count(SearchFilter(dataset="folder")) == 10


def test_sync_of_whole_slide_images_keeps_mosaics_and_drops_a_deleted_slide(
    encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    from histo.data.synth_slides import write_synthetic_slides

    root = tmp_path / "wsi"
    written = write_synthetic_slides("bach", root, slides_per_class=1, seed=1, size=(1536, 2048))
    touched, deleted = written[0], written[1]
    with EdgeStore(tmp_path / "index") as store:
        records = scan_dataset(root, "slides").records
        ingest(records, Ingestor(store, encoders), TilingConfig(), 10**8, 0, False)
        before = {r.id: r for r in store.scroll(with_vectors=True)}
        of_deleted = {i for i, r in before.items() if r.payload["slide_id"] == deleted.slide_id}
        assert of_deleted and all(r.payload.get("role") == "mosaic" for r in before.values())
        deleted.path.unlink()
        stat = touched.path.stat()
        os.utime(touched.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        scan = scan_dataset(root, "slides")
        plan = plan_sync(store, "slides", scan.root, scan.records)
        summary = ingest(plan.records, Ingestor(store, encoders), TilingConfig(), 10**8, 0, False)
        result = settle(store, plan, (p.path for p in summary.failed))
        assert plan.states[touched.path.relative_to(root).as_posix()] == "touched" and summary.embedded == 0
        assert [f.rel_path for f in plan.gone] == [deleted.path.relative_to(root).as_posix()]
        assert result.gone_removed == len(of_deleted)
        after = {r.id: r for r in store.scroll(with_vectors=True)}
        assert set(after) == set(before) - of_deleted
        for pid, record in after.items():  # vectors and mosaic marks kept; the touched slide restamped
            assert record.vectors == before[pid].vectors and record.payload["role"] == "mosaic"
            moved = record.payload["slide_id"] == touched.slide_id
            assert record.payload["file_mtime_us"] == before[pid].payload["file_mtime_us"] + moved * 10**6
