"""The gRPC server model: ``grpc.server`` on a thread pool (histo's) against ``grpc.aio``.

The same servicer, engine and index (5,000 tiles, one 512-d vector) behind each model, each in a
process of its own on loopback; the aio server runs the servicer's blocking handlers on its
``migration_thread_pool`` (search is CPU work in the engine and torch: an async port would hand it
to threads all the same). Measured per model: a health check (the transport alone), a search by
stored id one call at a time (its p50 minus the engine's in-process p50 is the per-call
overhead), and ``clients`` threads searching by id at once for ``seconds`` (calls/s, p50, p99).

Run as ``python -m benchmarks.server_model serve --model threads|aio HOME`` it is the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import Row, latency_summary, ratio, spawn_listening, timed
from benchmarks.search_scale import _home, fill, point_id
from histo.client import SearchClient
from histo.encoders.baselines import make_baseline_artifact
from histo.search import SearchEngine
from histo.store import EdgeStore

NAME = "server_model"
MODELS = ("threads", "aio")
ENCODER = "simclr"
WORKERS = 64  # GrpcSettings.workers


def _engine(home: Path, store: EdgeStore) -> SearchEngine:
    return SearchEngine.load(store, home / "encoders")


# -- the servers ----------------------------------------------------------------------------------


def serve_threads(home: Path) -> None:
    from histo.settings import GrpcSettings
    from services.search.server import create_server

    with EdgeStore(home / "index") as store:
        server, port = create_server(GrpcSettings(port=0), _engine(home, store), max_workers=WORKERS)
        server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        signal.sigwait({signal.SIGTERM})
        server.stop(0)


async def _serve_aio(home: Path) -> None:
    from grpc_health.v1 import health

    from histo.rpc.v1 import search_pb2_grpc
    from services.search.servicer import SearchServicer

    with EdgeStore(home / "index") as store:
        engine = _engine(home, store)
        server = grpc.aio.server(migration_thread_pool=futures.ThreadPoolExecutor(WORKERS))
        search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(lambda: engine), server)
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)


def _start(model: str, home: Path) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "benchmarks.server_model", "serve", "--model", model, str(home)]
    return spawn_listening(argv, {**os.environ, "OMP_NUM_THREADS": "1"}, f"the {model} server")


# -- the measurements -----------------------------------------------------------------------------


def _concurrent(address: str, ids: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, one channel each, searching by id until the time is up."""
    times: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    deadline = time.perf_counter() + seconds

    def loop(k: int) -> None:
        with SearchClient(address, timeout=30) as client:
            i = k
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    client.search(encoder=ENCODER, point_id=ids[i % len(ids)], top_k=10)
                except Exception:
                    errors[0] += 1
                times[k].append((time.perf_counter() - started) * 1000)
                i += clients

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    every = [t for ts in times for t in ts]
    return {"calls_per_s": round(len(every) / wall, 1), "errors": errors[0], **latency_summary(every)}


def measure_model(model: str, home: Path, ids: list[str], clients: int, seconds: float) -> dict[str, Any]:
    process, address = _start(model, home)
    try:
        with SearchClient(address, timeout=60) as client, grpc.insecure_channel(address) as channel:
            client.wait_ready(120)
            health = health_pb2_grpc.HealthStub(channel)
            health_ms, _ = timed(lambda _: health.Check(health_pb2.HealthCheckRequest()), range(300))
            search_ms, _ = timed(
                lambda i: client.search(encoder=ENCODER, point_id=ids[i % len(ids)], top_k=10), range(300)
            )
        loaded = _concurrent(address, ids, clients, seconds)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return {
        "health": latency_summary(health_ms),
        "search_by_id": latency_summary(search_ms),
        "loaded": loaded,
    }


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    points, clients, seconds = (1000, 4, 2.0) if quick else (5000, 32, 20.0)
    ids = [point_id(k) for k in range(0, points, 7)]
    with _home() as home:
        with EdgeStore(home / "index") as store:
            fill(store, points, 512, 0, names=(ENCODER,))
        make_baseline_artifact("random", home / "encoders" / ENCODER, input_size=32)
        with EdgeStore(home / "index") as store:
            engine = _engine(home, store)
            local_ms, _ = timed(
                lambda i: engine.search(encoder=ENCODER, point_id=ids[i % len(ids)], top_k=10), range(300)
            )
            engine.close()
        models = {m: measure_model(m, home, ids, clients, seconds) for m in MODELS}
    in_process = latency_summary(local_ms)
    for row in models.values():
        row["overhead_p50_ms"] = round(row["search_by_id"]["p50_ms"] - in_process["p50_ms"], 3)
    return {
        "points": points,
        "clients": clients,
        "seconds": seconds,
        "in_process_search_by_id": in_process,
        "models": models,
        "aio_over_threads": {
            "overhead_p50": ratio(models["aio"]["overhead_p50_ms"], models["threads"]["overhead_p50_ms"], 2),
            "loaded_calls_per_s": ratio(
                models["aio"]["loaded"]["calls_per_s"], models["threads"]["loaded"]["calls_per_s"], 2
            ),
        },
    }


def rows(report: dict[str, Any]) -> list[Row]:
    threads = report["models"]["threads"]
    local = report["in_process_search_by_id"]["p50_ms"]
    out = []
    for model, row in report["models"].items():
        loaded = row["loaded"]
        out.append(
            Row(
                f"{model}: health p50; search-by-id p50 (overhead over in-process "
                f"{local:.2f}); {report['clients']} clients calls/s, p50",
                f"{row['health']['p50_ms']:.2f}; {row['search_by_id']['p50_ms']:.2f} "
                f"({row['overhead_p50_ms']:.2f}); {loaded['calls_per_s']}, {loaded['p50_ms']:.1f}",
                f"threads {threads['loaded']['calls_per_s']} calls/s",
                f"{ratio(loaded['calls_per_s'], threads['loaded']['calls_per_s'], 2):.2f}",
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_model")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve HOME's index with one server model")
    serve.add_argument("--model", choices=MODELS, required=True)
    serve.add_argument("home", type=Path)
    args = parser.parse_args(argv)
    if args.model == "aio":
        asyncio.run(_serve_aio(args.home))
    else:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        serve_threads(args.home)


if __name__ == "__main__":
    main()
