"""A bounded load test of the gRPC search service: N concurrent clients for D seconds.

The index and the server are ``benchmarks.query_image``'s (synthetic BRACS tiles embedded with
the ``random`` and ``colorhist`` baselines, jittered copies up to ``points``; ``python -m
services.search`` on a free loopback port). Each server set-up of ``SETUPS`` (histo's defaults;
the set-up before them) is measured in four phases: one client by id (idle), ``clients`` by id
only, ``clients`` calling back to back until the time is up — most by a stored tile's id, a share
(``image_share``) by uploading a 224 px PNG tile, which the server embeds — and a few clients
uploading only (embedding throughput). Every call's latency and status code is recorded; nothing is
retried, so an overloaded server shows up as errors (e.g. DEADLINE_EXCEEDED) rather than being
hidden.

    .venv/bin/python -m benchmarks.load [--quick] [--clients 32] [--seconds 30]
    .venv/bin/python -m benchmarks run --only load [--quick]

Writes ``benchmarks/results/load.json`` (with ``--quick``: ``benchmarks/results/quick/load.json``,
so a smoke run never overwrites the full figures). ``run()`` only returns the figures: the
``benchmarks`` runner writes them with the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.common import QUICK_DIR, RESULTS_DIR, Row, latency_summary, machine, write_report
from benchmarks.query_image import TILE, build_index, serve
from histo.client import SearchClient
from histo.errors import HistoError
from histo.store import EdgeStore

NAME = "load"
FULL = {"clients": 32, "seconds": 30.0, "points": 5000, "slides": 2, "input_size": TILE}
#: quick: the encoder sees 64 px (uploads stay 224 px tiles), as in ``benchmarks.query_image``
QUICK = {"clients": 8, "seconds": 3.0, "points": 1000, "slides": 1, "input_size": 64}
CALL_TIMEOUT_S = 30.0


@dataclass
class Tally:
    """One client thread's calls: latency (ms) per kind of query, and status codes."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"by_id": [], "by_image": []})
    codes: Counter[str] = field(default_factory=Counter)


def query_material(home: Path) -> tuple[list[str], list[bytes]]:
    """Stored point ids to search by, and 224 px PNG tiles to upload."""
    with EdgeStore(home / "index") as store:
        ids = [record.id for record in store.scroll()]
    tiles = []
    for path in sorted((home / "data" / "bracs").rglob("*.png"))[:10]:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").crop((0, 0, TILE, TILE)).save(buffer, format="PNG")
            tiles.append(buffer.getvalue())
    return ids, tiles


def client_loop(
    address: str,
    deadline: float,
    ids: list[str],
    tiles: list[bytes],
    image_share: float,
    seed: int,
    tally: Tally,
) -> None:
    """Call ``Search`` back to back until ``deadline``; every outcome is counted, none retried."""
    rng = random.Random(seed)
    with SearchClient(address, timeout=CALL_TIMEOUT_S) as client:
        while time.monotonic() < deadline:
            kind = "by_image" if rng.random() < image_share else "by_id"
            query: dict[str, Any] = (
                {"image": rng.choice(tiles), "encoder": "random"}
                if kind == "by_image"
                else {"point_id": rng.choice(ids), "encoder": "random"}
            )
            started = time.perf_counter()
            try:
                client.search(top_k=10, **query)
                code = "OK"
            except HistoError as exc:
                code = str(getattr(exc, "grpc_code", None) or type(exc).__name__)
            tally.latencies[kind].append((time.perf_counter() - started) * 1000.0)
            tally.codes[code] += 1


def hammer(
    address: str, clients: int, seconds: float, ids: list[str], tiles: list[bytes], image_share: float
) -> tuple[list[Tally], float]:
    """Run ``clients`` threads for ``seconds``; returns their tallies and the wall time taken."""
    tallies = [Tally() for _ in range(clients)]
    started = time.monotonic()
    deadline = started + seconds
    threads = [
        threading.Thread(
            target=client_loop,
            args=(address, deadline, ids, tiles, image_share, n, tallies[n]),
            name=f"load-client-{n}",
        )
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tallies, time.monotonic() - started


def report(tallies: list[Tally], wall_s: float) -> dict[str, Any]:
    """Calls, QPS, latency overall and per kind, and errors by status code."""
    codes: Counter[str] = Counter()
    per_kind: dict[str, list[float]] = {"by_id": [], "by_image": []}
    for tally in tallies:
        codes.update(tally.codes)
        for kind, times in tally.latencies.items():
            per_kind[kind].extend(times)
    every = per_kind["by_id"] + per_kind["by_image"]
    calls = len(every)
    return {
        "calls": calls,
        "wall_s": round(wall_s, 2),
        "qps": round(calls / wall_s, 1) if wall_s > 0 else 0.0,
        "errors": calls - codes["OK"],
        "status_codes": dict(sorted(codes.items())),
        "latency_ms": _latency(every),
        "by_kind": {kind: _latency(times) for kind, times in per_kind.items() if times},
    }


def _latency(ms: list[float]) -> dict[str, float]:
    """p50/p99/mean of calls that overlapped (common's per-caller ``qps`` would mislead here)."""
    if not ms:
        return {}
    figures = latency_summary(ms)
    figures.pop("qps", None)
    return figures


#: Server set-ups measured under the same load: histo's defaults (RPC threads that only wait while
#: one embedding thread, using every core, batches the uploads), and the set-up before them (8 RPC
#: threads, each embedding its own uploads with one torch thread); in full runs also the batching
#: worker with one torch thread.
SETUPS: dict[str, dict[str, Any]] = {
    "isolated": {"settings": {}, "torch_threads": None},
    "before": {"settings": {"HISTO_GRPC__WORKERS": "8", "HISTO_GRPC__EMBED_BATCH": "0"}, "torch_threads": 1},
    "isolated_1_torch_thread": {"settings": {}, "torch_threads": 1, "full_only": True},
}
#: Seconds of the idle phase (one client, ids only) and of the uploads-only phase, and its clients.
PHASES = {
    "full": {"idle": 8.0, "uploads": 20.0, "upload_clients": 8},
    "quick": {"idle": 1.0, "uploads": 2.0, "upload_clients": 2},
}


def run(
    quick: bool = False,
    *,
    clients: int | None = None,
    seconds: float | None = None,
    image_share: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the index; for each server set-up, serve it, measure it idle, under the mixed load
    and with uploads only, stop it; return the figures (top level: histo's defaults)."""
    plan = dict(QUICK if quick else FULL)
    clients = int(clients or plan["clients"])
    seconds = float(seconds or plan["seconds"])
    if clients < 1 or seconds <= 0 or not 0.0 <= image_share <= 1.0:
        raise ValueError("clients must be >= 1, seconds > 0 and image_share within [0, 1]")
    phases = PHASES["quick" if quick else "full"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_start = [round(x, 2) for x in os.getloadavg()]
    setups: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="histo-load-") as folder:
            home = Path(folder)
            size = int(plan["input_size"])
            index = build_index(home, int(plan["points"]), int(plan["slides"]), seed, input_size=size)
            ids, tiles = query_material(home)
            for name, setup in SETUPS.items():
                if quick and setup.get("full_only"):
                    continue
                process, address = serve(home, setup["settings"], setup["torch_threads"])
                try:
                    with SearchClient(address, timeout=120) as probe:
                        probe.wait_ready(300)
                    setups[name] = phases_of(address, ids, tiles, clients, seconds, image_share, phases)
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=120)
    finally:
        torch.set_num_threads(threads)
    main = setups["isolated"]
    return {
        "clients": clients,
        "seconds": seconds,
        "image_share": image_share,
        **main["load"],
        "idle_by_id": main["idle"]["by_kind"]["by_id"],
        "ids_only_by_id": main["ids_only"]["by_kind"]["by_id"],
        "uploads": {name: s["uploads"] for name, s in setups.items()},
        "setups": {name: s["load"] for name, s in setups.items()},
        "ratios": ratios(setups),
        "server": (
            "python -m services.search on 127.0.0.1 with histo's defaults (HISTO_GRPC__WORKERS 64, "
            "HISTO_GRPC__EMBED_BATCH 32, 5 ms; torch's threads); 'before': 8 RPC threads, no batching, "
            "--torch-threads 1"
        ),
        "index": index,
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "note": (
            "synthetic index; client threads and server share one machine over loopback; by_id = "
            "a stored tile's id (top 10), by_image = a 224 px PNG upload embedded by the random "
            "ResNet-18 baseline with 4-orientation pooling (top 10); no call is retried"
        ),
    }


def phases_of(
    address: str,
    ids: list[str],
    tiles: list[bytes],
    clients: int,
    seconds: float,
    image_share: float,
    phases: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """One server's figures: idle (one client, ids), all clients by id only, the mixed load, and
    uploads only."""
    idle = report(*hammer(address, 1, phases["idle"], ids, tiles, 0.0))
    ids_only = report(*hammer(address, clients, phases["idle"], ids, tiles, 0.0))
    mixed = report(*hammer(address, clients, seconds, ids, tiles, image_share))
    uploads = report(*hammer(address, phases["upload_clients"], phases["uploads"], ids, tiles, 1.0))
    uploads["clients"] = phases["upload_clients"]
    return {"idle": idle, "ids_only": ids_only, "load": mixed, "uploads": uploads}


def ratios(setups: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The issue's goals as ratios: id-query p50 under load over idle, and upload throughput
    against the set-up before, both for histo's defaults."""
    main = setups["isolated"]
    loaded = main["load"]["by_kind"].get("by_id", {}).get("p50_ms", 0.0)
    idle = main["idle"]["by_kind"]["by_id"]["p50_ms"]
    crowd = main["ids_only"]["by_kind"]["by_id"]["p50_ms"]
    out = {
        "id_p50_under_load_over_idle": round(loaded / idle, 2) if idle else 0.0,
        # the uploads' own share: the same clients asking by id only
        "id_p50_under_load_over_ids_only": round(loaded / crowd, 2) if crowd else 0.0,
    }
    before = setups.get("before")
    if before:
        old_qps, new_qps = before["uploads"]["qps"], main["uploads"]["qps"]
        out["upload_throughput_over_before"] = round(new_qps / old_qps, 2) if old_qps else 0.0
        old_id = before["load"]["by_kind"].get("by_id", {}).get("p50_ms", 0.0)
        out["id_p50_under_load_before_over_now"] = round(old_id / loaded, 2) if loaded else 0.0
    return out


def rows(report: dict[str, Any]) -> list[Row]:
    """The runner's table: throughput, latency and errors under load."""
    latency = report["latency_ms"]
    out = [
        Row(
            f"{report['clients']} clients x {report['seconds']:g} s: calls, QPS",
            f"{report['calls']}, {report['qps']}",
        ),
        Row(
            "latency p50 / p99 / mean ms",
            f"{latency['p50_ms']:.1f} / {latency['p99_ms']:.1f} / {latency['mean_ms']:.1f}",
        ),
        Row("errors (by status code)", f"{report['errors']} {report['status_codes']}"),
    ]
    for kind, figures in report["by_kind"].items():
        out.append(Row(f"{kind}: p50 / p99 ms", f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f}"))
    idle, ratio = report["idle_by_id"], report["ratios"]
    out.append(
        Row(
            "by_id under load / idle p50",
            f"{idle['p50_ms']:.1f} ms idle",
            ratio=f"{ratio['id_p50_under_load_over_idle']:.2f}",
        )
    )
    for name, figures in report["uploads"].items():
        out.append(Row(f"uploads only, {figures['clients']} clients ({name}): calls/s", f"{figures['qps']}"))
    if "upload_throughput_over_before" in ratio:
        out.append(
            Row("upload throughput, now / before", "", ratio=f"{ratio['upload_throughput_over_before']:.2f}")
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 clients for 3 s on a 1k index")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 32)")
    parser.add_argument("--seconds", type=float, default=None, help="how long to load (default 30)")
    parser.add_argument("--image-share", type=float, default=0.1, help="share of image uploads")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: see above)")
    options = parser.parse_args(argv)
    started, stamp = time.perf_counter(), dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    figures = run(
        options.quick, clients=options.clients, seconds=options.seconds, image_share=options.image_share
    )
    report = {
        "suite": NAME,
        "command": "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": options.quick,
        "started_utc": stamp,
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": machine(),
        **figures,
    }
    out = options.out or (QUICK_DIR if options.quick else RESULTS_DIR)
    path = write_report(out, NAME, report)
    keys = ("clients", "seconds", "calls", "qps", "errors", "status_codes", "latency_ms", "by_kind")
    print(json.dumps({k: figures[k] for k in keys}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
