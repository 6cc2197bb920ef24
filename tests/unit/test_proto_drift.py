"""The committed gRPC code in histo/rpc/v1 is exactly what scripts/gen_proto.sh makes of the .proto."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("search_pb2.py", "search_pb2.pyi", "search_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools generates the code (pip install grpcio-tools)")
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    drift = []
    for name in GENERATED:
        committed = (REPO / "histo" / "rpc" / "v1" / name).read_text()
        fresh = (tmp_path / "histo" / "rpc" / "v1" / name).read_text()
        if committed != fresh:
            diff = difflib.unified_diff(
                committed.splitlines(), fresh.splitlines(), f"committed/{name}", f"fresh/{name}", lineterm=""
            )
            drift.append("\n".join(list(diff)[:40]))
    assert not drift, "generated code is stale; run scripts/gen_proto.sh and commit:\n" + "\n".join(drift)


def test_package_mirrors_the_path_and_comments_reach_the_stubs() -> None:
    from histo.rpc.v1 import search_pb2, search_pb2_grpc

    assert search_pb2.DESCRIPTOR.package == "histo.rpc.v1"
    assert search_pb2.DESCRIPTOR.name == "histo/rpc/v1/search.proto"
    assert set(search_pb2.DESCRIPTOR.services_by_name["SearchService"].methods_by_name) == {
        "Search",
        "ListEncoders",
        "GetIndexStats",
        "GetTile",
        "SearchSlides",
        "GetHeatmap",
        "CreateSnapshot",
    }
    assert "max similarity" in (REPO / "proto" / "histo" / "rpc" / "v1" / "search.proto").read_text().lower()
    assert "top_k indexed tiles" in (search_pb2_grpc.SearchServiceServicer.Search.__doc__ or "")
    assert "no path in a request" in (search_pb2_grpc.SearchServiceServicer.GetTile.__doc__ or "")
