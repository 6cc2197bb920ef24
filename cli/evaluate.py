"""``histocli evaluate --dataset NAME``: which encoder retrieves best, as a report with plots."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.common import Fusion, console, domain_errors, open_index, settings_of, table
from histo.errors import InvalidInputError

if TYPE_CHECKING:
    from histo.query_evaluation import FeedbackFigures


class Level(StrEnum):
    tile = "tile"
    slide = "slide"


def parse_ks(text: str) -> list[int]:
    """``"1,5,10"`` to ``[1, 5, 10]``, with a clear error for anything else."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InvalidInputError(
            f"-k {text!r}: give positive integers separated by commas, e.g. 1,5,10"
        ) from None
    if not ks or ks[0] < 1:
        raise InvalidInputError(f"-k {text!r}: give positive integers separated by commas, e.g. 1,5,10")
    return ks


@domain_errors
def evaluate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="The data set to evaluate on, as ingested."),
    encoders: str = typer.Option(
        "all", "--encoders", "-e", help="all (every vector in the index) or a comma list."
    ),
    k: str = typer.Option("1,5,10", "-k", "--cutoffs", help="Cut-offs k of the metrics, comma separated."),
    out: Path | None = typer.Option(
        None, "--out", help="Report folder (default HISTO_HOME/reports/DATASET)."
    ),
    data: Path | None = typer.Option(None, "--data", help="The data set folder, to draw the query grid."),
    max_queries: int = typer.Option(
        2000, "--max-queries", min=1, help="Sample this many queries on larger sets."
    ),
    seed: int = typer.Option(0, "--seed"),
    synthetic: bool = typer.Option(False, "--synthetic", help="Label the report as synthetic data."),
    level: Level = typer.Option(
        Level.tile, "--level", help="tile: tiles retrieve tiles; slide: whole slides retrieve slides."
    ),
    fusion: Fusion | None = typer.Option(
        None, "--fusion", help="Add a row: the chosen encoders (2 or more) fused in the store."
    ),
    feedback: bool = typer.Option(
        False, "--feedback", help="Also simulate a feedback round per encoder (P@10 before / after)."
    ),
) -> None:
    """Leave-one-out retrieval (own image and slide excluded) for every encoder, with a report;
    --level slide: leave-one-slide-out slide search (majority vote of the top k slides);
    --fusion rrf: the encoders fused, beside each alone; --feedback: a simulated feedback round."""
    from histo.evaluation import evaluate as run_evaluation
    from histo.evaluation import evaluate_slides
    from histo.query_evaluation import evaluate_fusion, fused_name, simulate_feedback
    from histo.report import comparison_table, write_feedback, write_report, write_slide_report
    from histo.store.base import STRATEGIES

    settings = settings_of(ctx)
    ks = parse_ks(k)
    if level is Level.slide and (fusion is not None or feedback):
        raise InvalidInputError("--fusion and --feedback evaluate tile search; drop --level slide")
    rounds: list[FeedbackFigures] = []
    chosen = None if encoders.strip() == "all" else [e.strip() for e in encoders.split(",") if e.strip()]
    if level is Level.slide:
        with open_index(settings) as store:
            results = evaluate_slides(store, dataset, chosen, ks)
        folder = out or settings.reports_dir / f"{dataset}-slides"
        report = write_slide_report(results, dataset, folder, ks, synthetic)
        title = f"slide search on {dataset} (leave-one-slide-out, own slide and patient excluded)"
    else:
        with open_index(settings) as store:
            results = run_evaluation(store, dataset, chosen, ks, max_queries=max_queries, seed=seed)
            names = list(results)
            if fusion is not None:
                fused = evaluate_fusion(store, dataset, names, fusion.value, ks, max_queries, seed)
                results[fused_name(names, fusion.value)] = fused
            if feedback:
                rounds = [
                    f
                    for n in names
                    for f in simulate_feedback(store, dataset, n, STRATEGIES, max_queries, seed)
                ]
        folder = out or settings.reports_dir / dataset
        report = write_report(results, dataset, folder, ks, {dataset: data} if data else None, synthetic)
        title = f"retrieval on {dataset} (leave-one-out, own image and slide excluded)"
    main = [c for k_ in ks for c in (f"mMV@{k_}", f"mAP@{k_}")] + ["Acc@1"]
    header, rows = comparison_table(results, ks, main)
    shown = table(header, title, numeric=[c for c in header if c != "encoder"])
    for row in rows:
        shown.add_row(*[cell.replace("**", "") for cell in row])
    console.print(shown, crop=False)
    if rounds:
        _print_feedback(rounds, dataset)
        console.print(f"feedback plot: {write_feedback(rounds, dataset, folder)}")
    console.print(f"report: {report}")


def _print_feedback(rounds: list[FeedbackFigures], dataset: str) -> None:
    columns = ("encoder", "strategy", "queries", "P@10 first page", "P@10 next page (11-20)", "P@10 after")
    shown = table(columns, f"one simulated feedback round on {dataset} (top 10 judged by label)", columns[2:])
    for f in rounds:
        shown.add_row(
            f.encoder, f.strategy, str(f.queries), f"{f.first:.3f}", f"{f.next_page:.3f}", f"{f.after:.3f}"
        )
    console.print(shown, crop=False)
