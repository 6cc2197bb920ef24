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
    from histo.report import Comparison


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
        None, "--out", help="Report folder (default: a new HISTO_HOME/reports/DATASET/<time> per run)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Where the data set's images are now, if they moved since ingestion."
    ),
    labels: str | None = typer.Option(None, "--labels", help="Evaluate on these labels only (comma list)."),
    root: Path | None = typer.Option(
        None, "--root", help="Evaluate on the tiles ingested from this folder only."
    ),
    max_queries: int = typer.Option(
        2000, "--max-queries", min=1, help="Sample this many queries on larger sets."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the query sample and of the bootstrap."),
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Label the report as synthetic data (automatic for histocli data synth)."
    ),
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
    """Leave-one-out retrieval (own image and slide excluded) for every encoder on the same
    queries, with 95 % intervals and a verdict against the best baseline, and a report;
    --level slide: leave-one-slide-out slide search (majority vote of the top k slides);
    --fusion rrf: the encoders fused, beside each alone; --feedback: a simulated feedback round."""
    from histo.comparison import mismatch, row_conditions
    from histo.evaluation import Narrowing, evaluate_slides
    from histo.evaluation import evaluate as run_evaluation
    from histo.query_evaluation import evaluate_fusion, fused_name, simulate_feedback
    from histo.report import (
        build_comparison,
        comparison_rows,
        main_k,
        write_feedback,
        write_report,
        write_slide_report,
    )
    from histo.store.base import STRATEGIES

    settings = settings_of(ctx)
    ks = parse_ks(k)
    narrowing = Narrowing(tuple(split_list(labels)), root) if labels or root else None
    check_options(level, fusion, feedback, narrowing)
    rounds: list[FeedbackFigures] = []
    chosen = None if encoders.strip() == "all" else split_list(encoders)
    folder = out or report_folder(settings.reports_dir, dataset, level)
    if level is Level.slide:
        with open_index(settings) as store:
            results = evaluate_slides(store, dataset, chosen, ks)
            synthetic = synthetic or records_synthetic(store, dataset)
        comparison = build_comparison(results, ks, row_conditions(results, settings.encoders_dir), seed)
        report = write_slide_report(comparison, dataset, folder, synthetic)
        title = f"slide search on {dataset} (leave-one-slide-out, own slide and patient excluded)"
    else:
        with open_index(settings) as store:
            results = run_evaluation(store, dataset, chosen, ks, max_queries, seed, narrowing=narrowing)
            synthetic = synthetic or records_synthetic(store, dataset)
            names = [n for n, r in results.items() if not r.partial]
            if fusion is not None:
                plan = results[names[0]].plan
                fused = evaluate_fusion(store, dataset, names, fusion.value, ks, max_queries, seed, plan=plan)
                results[fused_name(names, fusion.value)] = fused
            if feedback:
                rounds = [
                    f
                    for n in names
                    for f in simulate_feedback(store, dataset, n, STRATEGIES, max_queries, seed)
                ]
        comparison = build_comparison(results, ks, row_conditions(results, settings.encoders_dir), seed)
        scope = narrowing.describe() if narrowing else ""
        report = write_report(
            comparison, dataset, folder, {dataset: data} if data else None, synthetic, scope
        )
        title = f"retrieval on {dataset} (leave-one-out, own image and slide excluded; 95 % intervals)"
    kk = main_k(ks)
    header, rows = comparison_rows(comparison, [f"mMV@{kk}", f"mAP@{kk}", "Acc@1"])
    shown = table(header, title, numeric=header[1:4])
    for row in rows:
        shown.add_row(*row)
    console.print(shown, crop=False)
    _print_notes(comparison, mismatch(comparison.conditions), synthetic)
    if rounds:
        _print_feedback(rounds, dataset)
        console.print(f"feedback plot: {write_feedback(rounds, dataset, folder)}")
    console.print(f"report: {report}")


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def check_options(level: Level, fusion: Fusion | None, feedback: bool, narrowing: object) -> None:
    """Refuse combinations that would evaluate something else than asked, in one line each."""
    if level is Level.slide and (fusion is not None or feedback):
        raise InvalidInputError("--fusion and --feedback evaluate tile search; drop --level slide")
    if level is Level.slide and narrowing is not None:
        raise InvalidInputError("--labels and --root narrow tile search; drop them or --level slide")
    if narrowing is not None and (fusion is not None or feedback):
        raise InvalidInputError(
            "--fusion and --feedback run their queries in the store over the whole data set; "
            "drop --labels/--root to use them"
        )


def report_folder(reports_dir: Path, dataset: str, level: Level) -> Path:
    """A new folder per run (UTC time to the second, a counter if two runs share it)."""
    import datetime as dt

    base = reports_dir / (dataset if level is Level.tile else f"{dataset}-slides")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    folder, n = base / stamp, 1
    while folder.exists():
        n += 1
        folder = base / f"{stamp}-{n}"
    return folder


def records_synthetic(store: object, dataset: str) -> bool:
    """Whether the index records the data set as made by ``histocli data synth``."""
    from histo.data.datasets.base import ORIGIN_KEY, SYNTHETIC
    from histo.store.base import SearchFilter, VectorStore

    assert isinstance(store, VectorStore)
    return store.count_values(ORIGIN_KEY, SearchFilter(dataset=dataset)).get(SYNTHETIC, 0) > 0


def _print_notes(comparison: Comparison, warning: str | None, synthetic: bool) -> None:
    """What the table alone does not say: left-out classes, mismatched conditions, the verdict."""
    results = comparison.results
    plan = next((r.plan for r in results.values() if not r.partial and r.plan), None)
    if plan is not None and plan.left_out:
        named = ", ".join(f"{c} ({n} tiles)" for c, n in plan.left_out.items())
        console.print(
            f"note: left out as queries: {named}: each lies in one image, slide or patient, so nothing "
            "of it can be found once the query's own are excluded (still candidates)",
            highlight=False,
        )
    for name in comparison.partial:
        console.print(
            f"note: {name} lacks vectors for some tiles: scored on its own "
            f"{results[name].summary['queries']} queries, not comparable with the other rows; "
            "ingest the data set with it to compare",
            highlight=False,
        )
    if warning:
        console.print(warning, highlight=False)
    console.print(comparison.summary_line(), highlight=False)
    if synthetic:
        console.print("these figures are on synthetic data: they check the pipeline", highlight=False)


def _print_feedback(rounds: list[FeedbackFigures], dataset: str) -> None:
    columns = ("encoder", "strategy", "queries", "P@10 first page", "P@10 next page (11-20)", "P@10 after")
    shown = table(columns, f"one simulated feedback round on {dataset} (top 10 judged by label)", columns[2:])
    for f in rounds:
        shown.add_row(
            f.encoder, f.strategy, str(f.queries), f"{f.first:.3f}", f"{f.next_page:.3f}", f"{f.after:.3f}"
        )
    console.print(shown, crop=False)
