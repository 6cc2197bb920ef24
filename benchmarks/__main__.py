"""``python -m benchmarks run [--quick] [--only NAME ...] [--device cuda]``: every speed benchmark.

Each suite writes ``<out>/<name>.json`` (figures, the machine, the command, when and how long) and
prints a table of its figures against the baseline measured in the same run, with their ratio;
``summary.md`` in the same folder collects the tables. A full run writes ``benchmarks/results/``
(committed); ``--quick`` writes ``benchmarks/results/quick/`` so a smoke run never overwrites
them. ``--device cuda`` runs the embedding benchmark on the GPU at bf16 with a batch-size sweep
(``pipeline_cuda.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.common import QUICK_DIR, RESULTS_DIR, Row, machine, write_report

SUITES = {
    "pipeline": "benchmarks.pipeline",
    "search": "benchmarks.search_scale",
    "query_image": "benchmarks.query_image",
    "ingest_scale": "benchmarks.ingest_scale",
    "load": "benchmarks.load",
    "slide_read": "benchmarks.slide_read",
    "query_modes": "benchmarks.query_modes",
    "quantization": "benchmarks.quantization",
    "server_model": "benchmarks.server_model",
    "real_tissue": "benchmarks.real_tissue",
}
console = Console(width=150)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suites, write their JSON and print their tables")
    run.add_argument("--quick", action="store_true", help="small sizes: a smoke run in CI time")
    run.add_argument("--only", nargs="+", choices=list(SUITES), help="these suites only")
    run.add_argument("--device", default="cpu", help="cpu (default) or cuda: the GPU embedding run")
    run.add_argument("--out", type=Path, default=None, help="results folder (default: see above)")
    sub.add_parser("list", help="the suites and what each measures")
    return parser


def _module(name: str) -> ModuleType:
    return importlib.import_module(SUITES[name])


def _selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        return list(args.only)
    return ["pipeline"] if args.device.startswith("cuda") else list(SUITES)


def _table(name: str, rows: list[Row]) -> Table:
    table = Table(title=name, title_justify="left")
    for column in ("figure", "value", "baseline (same run)", "ratio"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows:
        table.add_row(row.what, row.value, row.baseline, row.ratio)
    return table


def _markdown(name: str, rows: list[Row]) -> str:
    lines = [f"### {name}", "", "| figure | value | baseline (same run) | ratio |", "|---|---|---|---|"]
    lines += [f"| {r.what} | {r.value} | {r.baseline} | {r.ratio} |" for r in rows]
    return "\n".join(lines) + "\n"


def _rows(module: ModuleType, report: dict[str, Any]) -> list[Row]:
    if hasattr(module, "rows"):
        return list(module.rows(report))
    return [Row(k, str(v)) for k, v in report.items() if isinstance(v, int | float | str)]


def run_suite(name: str, quick: bool, device: str, out: Path, command: str) -> tuple[Path, list[Row]]:
    """Run one suite and write its report; returns the file and the table rows."""
    module = _module(name)
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    kwargs = {"device": device} if name != "load" else {}
    report = module.run(quick=quick, **kwargs)
    file_name = f"{name}_cuda" if device.startswith("cuda") else name
    full = {
        "suite": name,
        "command": command,
        "quick": quick,
        "started_utc": stamp,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(device),
        **report,
    }
    return write_report(out, file_name, full), _rows(module, report)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for name in SUITES:
            console.print(f"[bold]{name}[/bold]: {(_module(name).__doc__ or '').splitlines()[0]}")
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            console.print("no CUDA device here: the GPU benchmark needs one (run without --device)")
            return 2
    out = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in _selected(args):
        console.print(f"[bold]{name}[/bold] …")
        path, rows = run_suite(name, args.quick, args.device, out, command)
        console.print(_table(name, rows))
        console.print(f"wrote {path}")
    console.print(f"wrote {write_summary(out)}")
    return 0


def write_summary(out: Path) -> Path:
    """``summary.md``: the table of every suite whose JSON is in ``out``, with its machine."""
    sections = []
    for path in sorted(out.glob("*.json")):
        report = json.loads(path.read_text())
        if report.get("suite") not in SUITES:
            continue
        m = report["machine"]
        where = f"{m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB" + (
            f", {m['gpu']}" if "gpu" in m else ""
        )
        rows = _rows(_module(report["suite"]), report)
        sections.append(
            f"{_markdown(path.stem, rows)}\n{where}; `{report['command']}`, {report['started_utc']}\n"
        )
    summary = out / "summary.md"
    summary.write_text("# Benchmark figures\n\n" + "\n".join(sections))
    return summary


if __name__ == "__main__":
    sys.exit(main())
