"""``python -m benchmarks run --quick``: the runner works and every report has every figure.

One real quick run (subprocess, as a user types it) into a temporary folder; the assertions check
the shape and sanity of each suite's JSON, not speeds (timed assertions would be flaky).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import SUITES

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LATENCY = {"queries", "p50_ms", "p99_ms", "mean_ms", "qps"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _report(results: Path, name: str) -> dict[str, Any]:
    report = json.loads((results / f"{name}.json").read_text())
    assert report["suite"] == name and report["quick"] is True
    assert report["command"].startswith("python -m benchmarks run --quick")
    assert report["machine"]["cpus"] >= 1 and report["machine"]["python"].startswith("3.")
    assert report["seconds"] > 0
    return dict(report)


def _latency(figures: dict[str, Any]) -> None:
    assert set(figures) >= LATENCY
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] and figures["qps"] > 0


def test_every_suite_wrote_a_report_and_the_summary(results: Path) -> None:
    assert sorted(p.stem for p in results.glob("*.json")) == sorted(SUITES)
    summary = (results / "summary.md").read_text()
    for name in SUITES:
        assert f"### {name}" in summary


def test_pipeline_report(results: Path) -> None:
    r = _report(results, "pipeline")
    assert r["tiles"] > 0 and r["batch_size"] > 0 and r["repeats"] == len(r["all_raw"])
    assert {r["loader_workers"], r["other_loader_workers"]} in ({0, 1}, {0, r["loader_workers"]})
    for key in ("raw_tiles_per_s", "pipeline_tiles_per_s", "pipeline_other_tiles_per_s"):
        assert r[key] > 0
    expected = r["pipeline_tiles_per_s"] / r["raw_tiles_per_s"]
    assert r["ratio_pipeline_over_raw"] == pytest.approx(expected, rel=0.01)


def test_search_report(results: Path) -> None:
    r = _report(results, "search")
    (size,) = r["results"]
    assert size["named_vectors"] == 4 and size["dim"] == 512
    for backend in ("edge", "edge_exact", "grpc", "qdrant_local", "faiss_flat", "faiss_hnsw"):
        for kind in ("unfiltered", "filtered"):
            _latency(size[backend]["latency"][kind])
            assert 0.0 <= size[backend]["recall_at_10"][kind] <= 1.0
    for exact in ("edge_exact", "qdrant_local", "faiss_flat", "grpc"):
        # exact searches agree with the embedded store's exact answer (HNSW is exact at 2k points)
        assert size[exact]["recall_at_10"]["filtered"] >= 0.99
    assert size["faiss_hnsw"]["recall_at_10"]["unfiltered"] >= 0.9
    assert size["edge"]["disk_mib_per_million"] > 0 and size["faiss_flat"]["memory_mib_per_million"] > 0
    assert size["grpc"]["server_rss_mib"] > 0
    assert not math.isnan(size["grpc"]["p50_ratio_to_edge"]["filtered"])


def test_query_image_report(results: Path) -> None:
    r = _report(results, "query_image")
    assert set(r["results"]) == {"tile", "4_tiles", "by_id"}
    for name, kind in r["results"].items():
        for path in ("grpc", "in_process") + (("embed_only",) if name != "by_id" else ()):
            _latency(kind[path])
        assert kind["ratio_grpc_over_in_process_p50"] > 0


def test_ingest_scale_report(results: Path) -> None:
    r = _report(results, "ingest_scale")
    assert set(r["tiles_per_s"]) == {"in_process", "celery_1", "celery_2"}
    assert all(rate > 0 for rate in r["tiles_per_s"].values())
    hours = r["hours_estimate"]["cpu_worker_measured"]
    assert set(hours) == {"BACH", "BRACS", "CRC"}
    for table in hours.values():
        # linear scaling: 8 workers take an eighth of one worker's time
        assert table["8_workers"] == pytest.approx(table["1_workers"] / 8, rel=0.05, abs=0.01)


def test_load_report(results: Path) -> None:
    r = _report(results, "load")
    assert r["errors"] == 0 and r["calls"] > 0


def test_slide_read_report(results: Path) -> None:
    r = _report(results, "slide_read")
    for name in ("level0", "2mpp"):
        figures = r["tiles_per_s"][name]
        assert figures["tiles"] > 0 and figures["pyramid_tiles_per_s"] > 0 and figures["png_tiles_per_s"] > 0
        assert figures["ratio"] == pytest.approx(
            figures["pyramid_tiles_per_s"] / figures["png_tiles_per_s"], rel=0.01
        )
    assert "big" not in r  # the 100k x 100k pyramid is a full run's figure only


@pytest.fixture(scope="module")
def query_modes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The query modes suite alone (seconds), so ``-k query_modes`` need not run every suite."""
    out = tmp_path_factory.mktemp("bench_query_modes")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--only", "query_modes", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### query_modes" in (out / "summary.md").read_text()
    return _report(out, "query_modes")


def test_query_modes_report(query_modes: dict[str, Any]) -> None:
    r = query_modes
    assert r["points"] == 2000 and r["queries"] > 0 and r["top_k"] == 10
    assert r["dims"] == {"enc_512": 512, "enc_256": 256, "enc_128": 128}
    assert 0.0 < r["filter_pass_share"] < 1.0
    rows = r["rows"]
    assert set(rows) == {
        "nearest",
        "fused2_rrf",
        "fused3_rrf",
        "fused3_dbsf",
        "recommend_best_score",
        "recommend_average_vector",
        "mmr",
        "nearest_filtered",
        "fused2_rrf_filtered",
        "recommend_best_score_filtered",
    }
    for key, row in rows.items():
        assert 0 < row["median_ms"] <= row["p95_ms"] and row["mean_ms"] > 0
        assert row["ratio"] > 0 and not math.isnan(row["ratio"])
        assert row["mean_hits"] == r["top_k"]  # every mode, filtered too, filled its top 10
        assert row["baseline"] == ("nearest_filtered" if key.endswith("_filtered") else "nearest")
        expected = row["median_ms"] / rows[row["baseline"]]["median_ms"]
        assert row["ratio"] == pytest.approx(expected, rel=0.05, abs=0.01)
    assert rows["nearest"]["ratio"] == 1.0 and rows["nearest_filtered"]["ratio"] == 1.0


def test_quantization_report(results: Path) -> None:
    r = _report(results, "quantization")
    small = r["small"]
    assert set(r["layouts"]) <= set(small) and r["default"] == "int8"
    for label in r["layouts"]:
        row = small[label]
        _latency(row["latency"]["filtered"])
        assert 0.0 <= row["recall_at_10"]["filtered"] <= 1.0 and row["disk_mib"] > 0
        assert row["filtered_p50_ratio_to_faiss_hnsw"] > 0
    assert small["int8"]["recall_at_10"]["unfiltered"] >= 0.9  # rescored with the float vectors
    assert r["centring"]["pooled"]["positive_share_of_dimensions"] == 1.0
    assert 0.5 < r["centring"]["clipped"]["positive_share_of_dimensions"] < 1.0
    keys = ("binary_recall_at_10_raw", "binary_recall_at_10_centred", "exact_top10_overlap_centred_vs_raw")
    for kind in ("clipped", "pooled"):
        assert all(0.0 <= r["centring"][kind][key] <= 1.0 for key in keys)
    assert r["big"] is None  # the million-tile build is a full run's figure only


def test_server_model_report(results: Path) -> None:
    r = _report(results, "server_model")
    assert set(r["models"]) == {"threads", "aio"}
    for model in r["models"].values():
        _latency(model["search_by_id"])
        assert model["loaded"]["errors"] == 0 and model["loaded"]["calls_per_s"] > 0
        assert model["overhead_p50_ms"] == pytest.approx(
            model["search_by_id"]["p50_ms"] - r["in_process_search_by_id"]["p50_ms"], abs=1e-3
        )
