"""``histocli``: train encoders, ingest data sets, search and evaluate — one file per command."""

from __future__ import annotations

import typer

from cli import (
    common,
    data_scan,
    data_synth,
    demo,
    encoders,
    evaluate,
    heatmap,
    index,
    index_ops,  # noqa: F401 - registers index snapshot, restore and migrate
    ingest,
    search,
    serve,
    train,
    web,
    worker,
)
from histo import __version__
from histo.settings import get_settings

app = typer.Typer(
    name="histocli",
    help="histo: find similar histopathology images with self-supervised encoders and Qdrant.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags without a type, paragraphs wrapped, one-line errors
)
data_app = common.app("Make synthetic H&E data sets and check data set folders.")
data_app.command("synth", short_help="Write a synthetic H&E data set in a real layout.")(data_synth.synth)
data_app.command("scan", short_help="Check a data set folder: images per split and label.")(data_scan.scan)
app.add_typer(data_app, name="data", short_help="Make synthetic data sets; check data set folders.")
app.command("train", short_help="Train an encoder: SimCLR, NNCLR, Barlow Twins or SwAV.")(train.train)
app.add_typer(encoders.app, name="encoders", short_help="List encoders and artifacts; import checkpoints.")
app.command("ingest", short_help="Tile a data set folder and index it with every encoder.")(ingest.ingest)
app.add_typer(index.app, name="index", short_help="Index stats, prune, drop, snapshot, restore, migrate.")
app.command("worker", short_help="Run a Celery worker for ingest --queue.")(worker.worker)
app.command("search", short_help="Find the tiles (or slides) most like an image or tile.")(search.search)
app.command("serve", short_help="Run the gRPC search service.")(serve.serve)
app.command("web", short_help="Run the search page and its JSON API.")(web.web)
app.command("evaluate", short_help="Compare encoders by leave-one-out retrieval; a report.")(
    evaluate.evaluate
)
app.command("heatmap", short_help="Colour a slide by each tile's likeness to a query.")(heatmap.heatmap)
app.command("demo", short_help="The whole job on synthetic data and real samples.")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"histo {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Load settings once (HISTO_* environment variables); every command reads them from here."""
    ctx.obj = get_settings()


if __name__ == "__main__":
    app()
