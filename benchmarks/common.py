"""What every benchmark suite shares: latency summaries, medians, the machine, sizes, results files.

Every figure a suite reports is a median over repeats (or a percentile over many calls), and every
comparison is a ratio of two figures measured in the same process run, so a busy or slow machine
moves both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"
#: Quick runs go here, so a smoke run never overwrites the committed figures of a full run.
QUICK_DIR = RESULTS_DIR / "quick"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    """One line of a suite's printed table: a figure, and what it is compared with."""

    what: str
    value: str
    baseline: str = ""
    ratio: str = ""


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean of per-call latencies, and the queries per second one caller achieved."""
    array = np.asarray(ms, dtype=np.float64)
    total_s = float(array.sum()) / 1000.0
    return {
        "queries": len(array),
        "p50_ms": round(float(np.percentile(array, 50)), 3),
        "p99_ms": round(float(np.percentile(array, 99)), 3),
        "mean_ms": round(float(array.mean()), 3),
        "qps": round(len(array) / total_s, 1) if total_s > 0 else 0.0,
    }


def timed(
    call: Callable[[Any], object], items: Sequence[Any] | range, warmup: int = 3
) -> tuple[list[float], list[Any]]:
    """Milliseconds per call over ``items`` and the calls' results, after ``warmup`` untimed calls
    (caches, lazy loads)."""
    for item in items[:warmup]:
        call(item)
    times, results = [], []
    for item in items:
        started = time.perf_counter()
        results.append(call(item))
        times.append((time.perf_counter() - started) * 1000.0)
    return times, results


def recall_at(found: Sequence[Iterable[Any]], truth: Sequence[Iterable[Any]]) -> float:
    """Mean share of the exact answer's ids that an approximate answer found, query by query."""
    shares = []
    for approx, exact in zip(found, truth, strict=True):
        wanted = set(exact)
        shares.append(len(set(approx) & wanted) / len(wanted) if wanted else 1.0)
    return round(float(np.mean(shares)), 4) if shares else float("nan")


def median_of(values: Iterable[float], digits: int = 2) -> float:
    return round(statistics.median(list(values)), digits)


def ratio(numerator: float, denominator: float, digits: int = 3) -> float:
    return round(numerator / denominator, digits) if denominator else float("nan")


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default), from /proc: no extra dependency."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def folder_mib(path: Path) -> float:
    """Bytes on disk under ``path`` (allocated blocks, so sparse files count as they really use)."""
    total = sum(p.stat().st_blocks * 512 for p in Path(path).rglob("*") if p.is_file())
    return total / MIB


def per_million(mib: float, points: int) -> float:
    return round(mib * 1_000_000 / points, 1) if points else float("nan")


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where the figures came from: they mean little without it."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_report(out_dir: Path, name: str, report: dict[str, Any]) -> Path:
    """``<out_dir>/<name>.json``, pretty-printed, ending in a newline."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def spawn_listening(argv: list[str], env: dict[str, str], what: str) -> tuple[subprocess.Popen[str], str]:
    """Start a server process that prints ``listening on ADDRESS`` first; returns it and the address."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"{what} did not start: {line!r}")
    return process, match.group(1)
