"""``histocli`` skeleton: help, data scan (table, JSON, problems), one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.data.samples import sample_dir
from histo.settings import get_settings
from tests.helpers import write_image

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTO_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "data" in result.output
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0 and "synth" in result.output and "scan" in result.output


def _bach(root: Path) -> Path:
    write_image(root / "Photos/Normal/n001.tif", 500, 300)
    write_image(root / "Photos/Benign/b001.tif", 250, 250)
    (root / "Photos/Benign/b002.tif").write_bytes(b"")
    return root


def test_scan_json_counts_and_problems(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["data", "scan", str(_bach(tmp_path / "bach")), "--dataset", "bach", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["images"], report["tiles"], report["tiles_exact"]) == (2, 2 + 1, False)
    assert [p["reason"] for p in report["problems"]] == ["empty file (0 bytes); re-download or remove it"]


def test_scan_decode_applies_tissue_test_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTO_TILING__TILE_SIZE", "100")
    get_settings.cache_clear()
    args = ["data", "scan", str(_bach(tmp_path / "bach")), "-d", "bach", "--decode", "--json"]
    report = json.loads(runner.invoke(app, args).output)
    assert report["tiles_exact"] is True
    assert report["tiles"] == 5 * 3 + 2 * 2
    table = runner.invoke(app, ["data", "scan", str(tmp_path / "bach"), "-d", "bach", "--tile-size", "250"])
    assert table.exit_code == 0 and "Normal" in table.output and "problems: 1" in table.output


def test_scan_shipped_samples_as_folder() -> None:
    result = runner.invoke(app, ["data", "scan", str(sample_dir()), "-d", "folder", "--json"])
    report = json.loads(result.output)
    assert report["images"] == 4 and report["problems"] == []
    assert {g["label"] for g in report["groups"]} == {"skin", "carcinoma", "ovarian_hgsc"}


def test_domain_errors_are_one_red_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "scan", str(tmp_path), "-d", "bracs"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "is not a bracs folder: expected" in result.output
    result = runner.invoke(app, ["data", "scan", str(tmp_path), "-d", "camelyon"])
    assert result.exit_code == 1 and "choose one of: bach, bracs, crc, folder" in result.output


def test_synth_then_scan_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "bracs"
    args = ["data", "synth", "bracs", str(out), "--slides", "3", "--tiles-per-slide", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 slides, 21 images, 21 tiles" in result.output and (out / "contact_sheet.png").is_file()
    scan_args = ["data", "scan", str(out), "-d", "bracs", "--decode", "--json"]
    report = json.loads(runner.invoke(app, scan_args).output)
    assert (report["images"], report["tiles"], report["problems"]) == (21, 21, [])
    assert {g["split"] for g in report["groups"]} == {"train", "val", "test"}
    bad = runner.invoke(app, ["data", "synth", "bracs", str(out), "--slides", "0"])
    assert bad.exit_code != 0
