"""A fair comparison as a new user meets it: a trained encoder and the ImageNet baseline ingested
together see the same input size, every evaluation writes its own report folder, and a data set
made by ``histocli data synth`` keeps its "synthetic" banner however the evaluation is run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from histo.encoders.artifact import load_meta
from histo.settings import get_settings

pytestmark = pytest.mark.integration
runner = CliRunner()


def histocli(home: Path, *args: str) -> str:
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, list(args), env={"HISTO_HOME": str(home), "COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output


def test_a_first_comparison_is_like_for_like(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "mine"
    histocli(home, "data", "synth", "bach", str(data), "--slides", "3", "--tiles-per-slide", "4")
    histocli(
        home, "train", "simclr", "--data", str(data), "--layout", "bach", "--steps", "2",
        "--batch-size", "4", "--input-size", "64", "--init", "imagenet",
    )  # fmt: skip
    said = histocli(home, "ingest", str(data), "--layout", "bach", "--encoders", "imagenet,simclr")
    assert "different input sizes" not in said
    encoders = home / "encoders"
    assert load_meta(encoders / "imagenet").input_size == load_meta(encoders / "simclr").input_size == 64

    first = histocli(home, "evaluate", "-d", "bach", "-k", "1,5")
    second = histocli(home, "evaluate", "-d", "bach", "-k", "1,5")
    assert "the rows differ" not in first and "vs imagenet (mMV@5)" in first
    assert "against imagenet (the best baseline)" in first and "synthetic data" in first
    reports = sorted((home / "reports" / "bach").iterdir())
    assert len(reports) == 2 and all(str(r) in text for r, text in zip(reports, (first, second), strict=True))
    for folder in reports:
        text = (folder / "report.md").read_text()
        assert "synthetic data" in text and "| simclr | 64 px |" in text and "(x-127)/128" in text
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["reference"] == "imagenet" and "simclr" in metrics["uncertainty"]["paired"]
        assert metrics["plan"]["simclr"] == metrics["plan"]["imagenet"]

    forced = histocli(home, "ingest", str(data), "--layout", "bach", "--encoders", "imagenet,simclr",
                      "--input-size", "96")  # fmt: skip
    assert load_meta(encoders / "imagenet").input_size == 96
    flat = " ".join(forced.split())
    assert flat.count("different input sizes (imagenet 96 px, simclr 64 px)") == 1, forced
    assert "make the baselines match with --input-size 64" in flat
    third = histocli(home, "evaluate", "-d", "bach", "-k", "1,5", "--out", str(tmp_path / "mine-report"))
    assert "warning: the rows differ in input size (imagenet 96 px, simclr 64 px)" in " ".join(third.split())
