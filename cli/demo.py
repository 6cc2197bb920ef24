"""``histocli demo``: the whole path on synthetic data and the real samples, in about ten minutes."""

from __future__ import annotations

import typer

from cli.common import console, domain_errors, settings_of, table
from histo.encoders import DEFAULT_INPUT_SIZE


@domain_errors
def demo(
    ctx: typer.Context,
    minutes: float = typer.Option(10.0, "--minutes", min=1.0, help="Time budget; training takes about half."),
    input_size: int = typer.Option(
        DEFAULT_INPUT_SIZE, "--input-size", min=32, help="Encoder input (96 by measurement; see README)."
    ),
    seed: int = typer.Option(0, "--seed"),
    init: str = typer.Option(
        "imagenet", "--init", help="imagenet: SSL continues from ImageNet weights; random: from scratch."
    ),
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Start from an empty demo index."),
) -> None:
    """Synthetic data + real samples → train 4 SSL methods → ingest → evaluate → example query."""
    import shutil

    from histo.demo import DemoConfig, run_demo
    from histo.report import comparison_rows
    from histo.store import open_store

    home = settings_of(ctx).home / "demo"
    if fresh and home.exists():
        shutil.rmtree(home)
    config = DemoConfig(home=home, minutes=minutes, input_size=input_size, seed=seed, init=init)
    with open_store(path=home / "index") as store:
        result = run_demo(config, store, say=lambda line: console.print(f"[bold]demo:[/bold] {line}"))
    for dataset, comparison in result.tables.items():
        header, rows = comparison_rows(comparison, ["mMV@5", "mAP@5", "Acc@1"])
        title = f"{dataset} (SYNTHETIC data): leave-one-out, own image and slide excluded; 95 % intervals"
        shown = table(header, title, numeric=header[1:4])
        for row in rows:
            shown.add_row(*row)
        console.print(shown, crop=False)
        console.print(comparison.summary_line(), highlight=False)
        console.print(f"report: {result.reports[dataset]}")
    example = result.example
    query = example["query"]
    console.print(f"example query ({example['encoder']}): {query['label']} tile of {query['image_id']}")
    for score, payload in example["hits"]:
        console.print(
            f"  {score:.3f}  {payload['label']:>10}  {payload['image_id']}  ({payload['x']},{payload['y']})"
        )
    slides = result.slides
    if slides:
        ranked = ", ".join(f"{slide} ({label}, {score:.3f})" for slide, label, score in slides["ranked"])
        console.print(
            f"slide search ({slides['encoder']}): {slides['query']} ({slides['label']}) is most like "
            f"{ranked}",
            highlight=False,
        )
        console.print(f"heatmap: {slides['heatmap']}", highlight=False)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"took {timing}")
    console.print(
        f"search it yourself: HISTO_HOME={home} histocli search IMAGE --encoder {example['encoder']}"
    )
    console.print(
        f"or in a browser: HISTO_HOME={home} histocli web  (then open http://127.0.0.1:8080)", highlight=False
    )
