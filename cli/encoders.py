"""``histocli encoders``: registered methods and baselines, trained artifacts, and imports."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, domain_errors, settings_of

app = typer.Typer(help="List encoders and trained artifacts; import solo-learn checkpoints.")


@app.callback(invoke_without_command=True)
@domain_errors
def list_encoders(ctx: typer.Context) -> None:
    """Registered methods and baselines, then the artifacts under HISTO_HOME/encoders."""
    if ctx.invoked_subcommand is not None:
        return
    from histo.encoders.artifact import list_artifacts
    from histo.encoders.registry import get_spec, names

    table = Table(title="registered encoders")
    for column in ("name", "kind", "available", "summary"):
        table.add_column(column)
    for name in names():
        spec = get_spec(name)
        table.add_row(name, spec.kind, "yes" if spec.available() else "not installed", spec.summary)
    console.print(table)
    artifacts = Table(title=f"artifacts in {settings_of(ctx).encoders_dir}")
    for column in ("name", "method", "backbone", "dim", "input", "orientations", "trained on", "kNN acc"):
        artifacts.add_column(column)
    for folder, meta in list_artifacts(settings_of(ctx).encoders_dir):
        trained_on = f"{meta.data.get('dataset', '-')} ({meta.data.get('tiles', '-')} tiles)"
        knn = meta.training.get("val_knn_acc")
        artifacts.add_row(
            folder.name,
            meta.method,
            meta.architecture,
            str(meta.embedding_dim),
            str(meta.input_size),
            str(meta.orientation_pooling),
            trained_on,
            f"{knn:.3f}" if isinstance(knn, float) else "-",
        )
    console.print(artifacts)


@app.command("import")
@domain_errors
def import_checkpoint(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="A solo-learn Lightning checkpoint (.ckpt)."),
    source: str = typer.Option("solo-learn", "--from", help="Where the checkpoint comes from."),
    method: str = typer.Option(..., "--method", help="The SSL method it was trained with."),
    name: str | None = typer.Option(None, "--name", help="Artifact name (default: METHOD)."),
    input_size: int = typer.Option(224, "--input-size"),
) -> None:
    """Turn a solo-learn checkpoint into a histo artifact (weights_only loading, allow-listed types)."""
    from histo.encoders.checkpoints import SOURCES, import_solo_learn
    from histo.errors import unknown_name

    if source not in SOURCES:
        raise unknown_name("checkpoint source", source, list(SOURCES))
    out = settings_of(ctx).encoders_dir / (name or method)
    artifact = import_solo_learn(checkpoint, method, out, input_size=input_size)
    console.print(f"imported {checkpoint} as {artifact}")
