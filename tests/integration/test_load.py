"""``benchmarks.load`` in a small configuration: a real server under concurrent clients, no errors."""

from __future__ import annotations

import pytest

from benchmarks import load

pytestmark = pytest.mark.integration


def test_a_short_load_run_has_no_errors_and_sane_figures() -> None:
    report = load.run(quick=True, clients=4, seconds=2.0, image_share=0.25)

    assert (report["clients"], report["seconds"], report["image_share"]) == (4, 2.0, 0.25)
    assert report["errors"] == 0 and report["status_codes"] == {"OK": report["calls"]}
    assert report["calls"] >= 4 and 2.0 <= report["wall_s"] < 2.0 + load.CALL_TIMEOUT_S
    assert report["qps"] == pytest.approx(report["calls"] / report["wall_s"], rel=0.01)
    latency = report["latency_ms"]
    assert latency["queries"] == report["calls"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] and latency["mean_ms"] > 0
    assert set(report["by_kind"]) == {"by_id", "by_image"}  # a quarter of the calls upload an image
    assert sum(k["queries"] for k in report["by_kind"].values()) == report["calls"]
    assert report["index"]["points"] == 1000 and report["index"]["encoders"]
    assert len(report["load_average_start"]) == 3 and "loopback" in report["note"]
    # histo's defaults and the set-up before them, each idle, under the load and with uploads only
    assert set(report["setups"]) == set(report["uploads"]) == {"isolated", "before"}
    assert all(s["errors"] == 0 for s in (*report["setups"].values(), *report["uploads"].values()))
    assert report["idle_by_id"]["p50_ms"] > 0 and report["uploads"]["isolated"]["qps"] > 0
    assert report["ratios"]["id_p50_under_load_over_idle"] > 0
    assert report["ratios"]["upload_throughput_over_before"] > 0
    assert [row.what for row in load.rows(report)][:3] == [
        "4 clients x 2 s: calls, QPS",
        "latency p50 / p99 / mean ms",
        "errors (by status code)",
    ]
