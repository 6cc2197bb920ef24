"""``histocli``: train encoders, ingest data sets, search and evaluate — one file per command."""

from __future__ import annotations

import typer

from cli import (
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
)
data_app = typer.Typer(help="Make synthetic H&E data sets and check data set folders.", no_args_is_help=True)
data_app.command("synth")(data_synth.synth)
data_app.command("scan")(data_scan.scan)
app.add_typer(data_app, name="data")
app.command("train")(train.train)
app.add_typer(encoders.app, name="encoders")
app.command("ingest")(ingest.ingest)
app.add_typer(index.app, name="index")
app.command("worker")(worker.worker)
app.command("search")(search.search)
app.command("serve")(serve.serve)
app.command("web")(web.web)
app.command("evaluate")(evaluate.evaluate)
app.command("heatmap")(heatmap.heatmap)
app.command("demo")(demo.demo)


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
