"""In-process ingestion: every tile once with every vector, resume, failures, new encoders, index CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.ingest import Ingestor, ingest
from histo.settings import get_settings
from histo.store import EdgeStore
from tests.helpers import baseline_embedders

runner = CliRunner()


@pytest.fixture(scope="module")
def bach(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bach")
    write_synthetic("bach", root, slides=2, tiles_per_slide=4, seed=2)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    (photos / "Normal" / "n900.tif").write_bytes(b"not a tiff at all")
    whole = (photos / "Benign" / "b001.tif").read_bytes()
    (photos / "Benign" / "b900.tif").write_bytes(whole[: len(whole) // 3])
    return root


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Embedder]:
    return baseline_embedders(tmp_path_factory.mktemp("encoders"))


def test_every_tile_lands_once_with_every_vector_and_reruns_skip(
    bach: Path, encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    records = scan_dataset(bach, "bach").records
    with EdgeStore(tmp_path / "index") as store:
        first = ingest(
            records,
            Ingestor(store, encoders, batch_size=3),
            TilingConfig(),
            10**8,
            num_workers=1,
            progress=False,
        )
        assert (first.images, first.tiles, first.embedded, first.skipped) == (10, 8, 8, 0)
        assert sorted(Path(p.path).name for p in first.failed) == ["b900.tif", "n900.tif"]
        stats = store.stats()
        assert stats["points"] == 8
        assert {name: info["points"] for name, info in stats["vectors"].items()} == {
            "colorhist": 8,
            "random": 8,
        }
        again = ingest(
            records,
            Ingestor(store, encoders, batch_size=3),
            TilingConfig(),
            10**8,
            num_workers=0,
            progress=False,
        )
        assert (again.embedded, again.skipped) == (0, 8) and store.count() == 8


def test_a_new_encoder_fills_only_its_vector(
    bach: Path, encoders: dict[str, Embedder], tmp_path: Path
) -> None:
    records = scan_dataset(bach, "bach").records
    with EdgeStore(tmp_path / "index") as store:
        ingest(
            records, Ingestor(store, {"colorhist": encoders["colorhist"]}), TilingConfig(), 10**8, 0, False
        )
        before = {r.id: r.vectors["colorhist"] for r in store.scroll(with_vectors=["colorhist"])}
        summary = ingest(records, Ingestor(store, encoders), TilingConfig(), 10**8, 0, False)
        assert summary.embedded == 8 and store.count() == 8
        after = {r.id: r.vectors for r in store.scroll(with_vectors=True)}
        assert all(
            np.allclose(after[i]["colorhist"], v) and len(after[i]["random"]) == 512
            for i, v in before.items()
        )


def test_cli_ingest_stats_and_drop(bach: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTO_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    args = ["ingest", str(bach), "-d", "bach", "--encoders", "colorhist", "--workers", "0", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["tiles"], summary["embedded"], summary["failed"]) == (8, 8, 2)
    failures = (tmp_path / "home" / "logs" / "ingest-bach-failures.tsv").read_text().splitlines()
    assert len(failures) == 2 and all("\t" in line for line in failures)
    stats = json.loads(runner.invoke(app, ["index", "stats", "--json"]).output)
    assert stats["points"] == 8 and stats["labels"]["bach"] == {
        "Benign": 2,
        "InSitu": 2,
        "Invasive": 2,
        "Normal": 2,
    }
    assert runner.invoke(app, ["index", "drop"], input="n\n").exit_code == 1
    assert runner.invoke(app, ["index", "drop", "--yes"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["index", "stats", "--json"]).output)["points"] == 0
    unknown = runner.invoke(app, ["ingest", str(bach), "-d", "bach", "--encoders", "moco"])
    assert unknown.exit_code == 1 and "unknown encoder 'moco'" in unknown.output
    untrained = runner.invoke(app, ["ingest", str(bach), "-d", "bach", "--encoders", "nnclr"])
    assert untrained.exit_code == 1 and "histocli train nnclr" in untrained.output


def test_progress_counts_tiles_embedded_not_tiles_cut(
    bach: Path, encoders: dict[str, Embedder], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = scan_dataset(bach, "bach").records
    with EdgeStore(tmp_path / "index") as store:
        first = ingest(records, Ingestor(store, encoders, batch_size=3), TilingConfig(), 10**8, 0, True)
        bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert "8 embedded" in bar and "0 already indexed" in bar and "8 cut" in bar
        assert first.as_dict()["embedded_per_second"] == round(first.embedded / first.seconds, 1) > 0
        again = ingest(records, Ingestor(store, encoders, batch_size=3), TilingConfig(), 10**8, 0, True)
        bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert "0 embedded, 0.0 tiles/s, 8 already indexed" in bar and again.embedded_per_second == 0.0
