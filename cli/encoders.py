"""``histocli encoders``: registered methods and baselines, trained artifacts, and imports."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, domain_errors, settings_of, table

app = typer.Typer(
    help="Without a command: list the registered methods and baselines, and the trained artifacts "
    "(with the digest their vectors are stamped with). import: turn a solo-learn checkpoint into one.",
    rich_markup_mode=None,
    add_completion=False,
)


@app.callback(invoke_without_command=True)
@domain_errors
def list_encoders(ctx: typer.Context) -> None:
    """List the registered methods and baselines, then the artifacts under HISTO_HOME/encoders
    (the digest is what each vector in the index records of the artifact that made it)."""
    if ctx.invoked_subcommand is not None:
        return
    from histo.encoders.artifact import artifact_digest, list_artifacts
    from histo.encoders.registry import get_spec, names

    registered = table(("name", "kind", "available", "summary"), "registered encoders")
    for name in names():
        spec = get_spec(name)
        registered.add_row(name, spec.kind, "yes" if spec.available() else "not installed", spec.summary)
    console.print(registered, crop=False)
    encoders_dir = settings_of(ctx).encoders_dir
    columns = (
        "name",
        "method",
        "backbone",
        "dim",
        "input",
        "orientations",
        "trained on",
        "kNN acc",
        "digest",
    )
    artifacts = table(columns, f"artifacts in {encoders_dir}", numeric=("dim", "input", "orientations"))
    for folder, meta in list_artifacts(encoders_dir):
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
            artifact_digest(folder),
        )
    console.print(artifacts, crop=False)


@app.command("import", short_help="Turn a solo-learn checkpoint into an artifact.")
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
