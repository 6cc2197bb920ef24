"""``python -m benchmarks.ssl_quality --quick``: real training runs, every figure in its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_quick_run_scores_every_encoder_on_every_task(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ssl_quality", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "ssl_quality.json").read_text())
    rows = report["per_seed"]["0"]
    assert set(rows) == {"random", "colorhist", "imagenet", "simclr (imagenet)", "simclr (random)"}
    for name, row in rows.items():
        for dataset in ("bach", "bracs"):
            assert 0 <= row[dataset]["mMV@5"] <= 1 and 0 <= row[dataset]["mAP@5"] <= 1, name
        assert 0 <= row["near_duplicates"]["all"] <= 1
    assert rows["simclr (imagenet)"]["training"]["steps"] == 2  # the fixed budget, not a time box
    # the ImageNet start is far above the random floor even after 2 steps; colour stays near chance
    assert rows["simclr (imagenet)"]["bach"]["mMV@5"] > rows["random"]["bach"]["mMV@5"] + 0.3
    assert rows["colorhist"]["bach"]["mMV@5"] < 0.4
    assert "| simclr (imagenet) |" in (tmp_path / "ssl_quality.md").read_text()
