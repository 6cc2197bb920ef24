"""``histocli ingest`` over one folder data set of good, odd and broken images (``tests/bad_inputs.py``).

The run must finish (exit 0: failed files are reported, they never stop a run), report every bad
file on one line that names it (console and failures file), index every decodable image's tiles
exactly once with every encoder's vector, write nothing for a refused file, and duplicate nothing
when run again.

``--min-tissue 0`` keeps every grid tile: the tissue test is colour-based, so the greyscale cases
(8- and 16-bit) would otherwise be dropped whole as background; this test checks decoding and
bookkeeping, so every tile of every decodable image is expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from histo.data.datasets import scan_dataset
from histo.data.records import point_id
from histo.data.tiling import TilingConfig, grid_boxes
from histo.encoders.baselines import make_baseline_artifact
from histo.jobs import plan_batches
from histo.settings import get_settings
from histo.store import Record, open_store
from tests.bad_inputs import (
    MAX_PIXELS,
    TILE,
    UNREADABLE_SKIP,
    Case,
    can_test_unreadable,
    matrix,
    write_matrix,
)
from tests.helpers import AS_FOLDER

ENCODERS = ("colorhist", "random")
runner = CliRunner()


@dataclass(frozen=True)
class Run:
    """What one ingestion of the matrix left behind."""

    cases: list[Case]
    root: Path
    paths: dict[str, Path]
    exit_code: int
    output: str
    failures: list[str]  # lines of the failures file
    points: list[Record]
    dims: dict[str, int]
    rerun: dict[str, object]  # the rerun's --json summary
    rerun_ids: set[str]


def cli_ingest(root: Path, *extra: str) -> tuple[int, str]:
    args = [
        "ingest",
        str(root),
        *AS_FOLDER,
        "-e",
        ",".join(ENCODERS),
        "--min-tissue",
        "0",
    ]
    result = runner.invoke(app, [*args, "--batch-size", "16", *extra])
    return result.exit_code, result.output


def expected_ids(case: Case) -> set[str]:
    """Point ids of every grid tile of an ingested case (its upright size, tile = stride = TILE)."""
    assert case.size is not None
    return {point_id("folder", case.rel_path, box) for box in grid_boxes(*case.size, TILE, TILE)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Ingest the matrix through the CLI (one loader worker process), then once more (in-process)."""
    home, root = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("data")
    cases = [c for c in matrix() if c.kind != "unreadable" or can_test_unreadable()]
    paths = write_matrix(root, cases)
    for name in ENCODERS:
        make_baseline_artifact(name, home / "encoders" / name, input_size=TILE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HISTO_HOME", str(home))
        env.setenv("HISTO_TILING__TILE_SIZE", str(TILE))
        env.setenv("HISTO_IMAGES__MAX_PIXELS", str(MAX_PIXELS))
        env.delenv("HISTO_QDRANT__URL", raising=False)
        env.setenv("COLUMNS", "400")
        get_settings.cache_clear()
        try:
            code, output = cli_ingest(root, "--workers", "1")
            with open_store(path=home / "index") as store:
                points, dims = list(store.scroll(with_vectors=True)), store.vectors()
            again_code, again = cli_ingest(root, "--workers", "0", "--json")
            assert again_code == 0, again
            with open_store(path=home / "index") as store:
                rerun_ids = {r.id for r in store.scroll()}
            failures = (home / "logs" / "ingest-folder-failures.tsv").read_text().splitlines()
            summary = json.loads(again)
            yield Run(cases, root, paths, code, output, failures, points, dims, summary, rerun_ids)
        finally:
            get_settings.cache_clear()
            torch.set_num_threads(threads)


def reported(run: Run) -> list[Case]:
    return [c for c in run.cases if c.outcome == "reported"]


def ingested(run: Run) -> list[Case]:
    return [c for c in run.cases if c.outcome == "ingested"]


def test_the_run_finishes_and_counts_every_file(run: Run) -> None:
    assert run.exit_code == 0, run.output  # failures are reported, they never fail the run
    tiles = sum(len(expected_ids(c)) for c in ingested(run))
    summary = f"{len(run.cases)} images, {tiles} tiles: {tiles} embedded, 0 skipped"
    assert summary in run.output
    assert f"{len(reported(run))} failed" in run.output


@pytest.mark.parametrize("case", [c for c in matrix() if c.outcome == "reported"], ids=lambda c: c.name)
def test_every_bad_file_is_reported_on_one_line_naming_it(run: Run, case: Case) -> None:
    if case.kind == "unreadable" and not can_test_unreadable():
        pytest.skip(UNREADABLE_SKIP)
    path = str(run.paths[case.rel_path])
    console = [line for line in run.output.splitlines() if line.startswith(f"  failed: {path}: ")]
    assert len(console) == 1, run.output
    assert case.reason in console[0]
    tsv = [line for line in run.failures if line.split("\t")[0] == path]
    assert len(tsv) == 1 and case.reason in tsv[0].split("\t")[1]


def test_failures_file_holds_exactly_the_bad_files(run: Run) -> None:
    assert all(line.count("\t") == 1 for line in run.failures)
    assert sorted(line.split("\t")[0] for line in run.failures) == sorted(
        str(run.paths[c.rel_path]) for c in reported(run)
    )


def test_every_decodable_image_is_indexed_once_with_every_vector(run: Run) -> None:
    want = set().union(*(expected_ids(c) for c in ingested(run)))
    ids = [p.id for p in run.points]
    assert len(ids) == len(set(ids)) and set(ids) == want
    assert set(run.dims) == set(ENCODERS)
    for point in run.points:  # no partial point: every vector, at its dimension
        assert {n: len(v) for n, v in point.vectors.items()} == run.dims, point.payload["path"]


def test_no_point_for_a_refused_file(run: Run) -> None:
    refused = {c.rel_path for c in reported(run)}
    paths = {str(p.payload["path"]) for p in run.points}
    assert not paths & refused
    assert paths == {c.rel_path for c in ingested(run)}


def test_exif_orientation_decides_the_grid(run: Run) -> None:
    """The EXIF-rotated JPEG is stored 128x64 and shown 64x128: tiles follow the upright image."""
    boxes = sorted(
        (p.payload["x"], p.payload["y"], p.payload["w"], p.payload["h"])
        for p in run.points
        if p.payload["path"] == "odd/exif6.jpg"
    )
    assert boxes == [(0, 0, TILE, TILE), (0, TILE, TILE, TILE)]


def test_a_rerun_duplicates_nothing(run: Run) -> None:
    tiles = len(run.points)
    assert run.rerun["embedded"] == 0 and run.rerun["skipped"] == tiles
    assert run.rerun["failed"] == len(reported(run))
    assert run.rerun_ids == {p.id for p in run.points}


def test_the_queue_planner_refuses_what_it_can_see_in_headers(run: Run) -> None:
    """``histocli ingest --queue`` plans from headers only: the files refused there are among the
    reported ones (the truncated ones fail later, in the worker), and no box is planned for them."""
    records = scan_dataset(run.root, "folder").records
    plan = plan_batches(records, TilingConfig(tile_size=TILE, min_tissue=0.0), MAX_PIXELS)
    refused = {Path(p.path).name: p.reason for p in plan.failures}
    header_visible = {c.name for c in reported(run)} - {"truncated.png", "truncated.jpg", "truncated.tif"}
    assert set(refused) == header_visible
    assert all(case.reason in refused[case.name] for case in reported(run) if case.name in refused)
    planned = {item.record.rel_path for batch in plan.batches for item in batch.items}
    assert planned == {c.rel_path for c in reported(run) if c.name.startswith("truncated")} | {
        c.rel_path for c in ingested(run)
    }
