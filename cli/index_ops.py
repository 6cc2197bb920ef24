"""``histocli index snapshot|restore|migrate``: back the index up, put a backup back, and move the
index between the embedded shard and a Qdrant server (README, "Backup, restore and move").

Registered on ``cli.index.app`` (imported by ``cli.main``). While ``histocli serve`` owns the
embedded index, ``snapshot`` asks it over gRPC (``--server``, else the configured HISTO_GRPC__
address) to take the snapshot under the store's lock and send it; ``restore`` and ``migrate``
need the index to themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from tqdm import tqdm

from cli.common import console, domain_errors, err_console, open_index, settings_of
from cli.index import app
from histo.errors import InvalidInputError, StoreLockedError
from histo.settings import Settings

MIB = 1024 * 1024


@app.command("snapshot", short_help="Back the index up to one file.")
@domain_errors
def snapshot(
    ctx: typer.Context,
    out: Path | None = typer.Argument(
        None, help="File to write, or a folder for a time-stamped one (default: HISTO_HOME/snapshots/)."
    ),
    server: str | None = typer.Option(
        None, "--server", help="HOST:PORT of the histocli serve that owns the index (asked anyway when busy)."
    ),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificate (PEM) for a TLS server."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Write a consistent snapshot of the index (one file, with a manifest) that restore puts back."""
    from histo.snapshots import create_snapshot, snapshot_path

    settings = settings_of(ctx)
    path = snapshot_path(out, settings.home / "snapshots", settings.qdrant.collection)
    if server:
        manifest, seconds = _through_service(settings, server, tls_ca, path)
    else:
        try:
            store = open_index(settings)
        except StoreLockedError as exc:
            if settings.qdrant.url:
                raise
            manifest, seconds = _through_owner(settings, tls_ca, path, exc)
        else:
            with store:
                taken = create_snapshot(store, path, settings.encoders_dir)
            manifest, seconds = taken.manifest, taken.seconds
    if as_json:
        typer.echo(
            json.dumps({"path": str(path), "seconds": round(seconds, 3), "manifest": manifest}, indent=2)
        )
        return
    size = path.stat().st_size / MIB
    console.print(
        f"snapshot of {manifest.get('source', 'the index')}: {path} ({size:.1f} MiB, "
        f"{manifest['points']} points, {manifest['kind']}) in {seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


def _through_owner(
    settings: Settings, tls_ca: Path | None, path: Path, locked: StoreLockedError
) -> tuple[dict[str, Any], float]:
    """The embedded index is busy: ask the search service at the configured address to take it."""
    from histo.client import ServiceError

    host = settings.grpc.host if settings.grpc.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    target = f"{host}:{settings.grpc.port}"
    try:
        result = _through_service(settings, target, tls_ca, path)
    except ServiceError:
        raise StoreLockedError(
            f"{locked}; if that is histocli serve on another address, run: "
            "histocli index snapshot --server HOST:PORT"
        ) from None
    err_console.print(
        f"the index is in use; the search service at {target} took the snapshot", highlight=False
    )
    return result


def _through_service(
    settings: Settings, target: str, tls_ca: Path | None, path: Path
) -> tuple[dict[str, Any], float]:
    import time

    from histo.client import SearchClient
    from histo.store.archive import read_manifest

    started = time.perf_counter()
    with SearchClient(target, token=settings.grpc.token, tls_ca=tls_ca or settings.grpc.tls_cert) as client:
        client.snapshot(path)
    return read_manifest(path), time.perf_counter() - started


@app.command("restore", short_help="Replace the index with a snapshot, checked first.")
@domain_errors
def restore(
    ctx: typer.Context,
    snapshot: Path = typer.Argument(..., help="The snapshot file (histocli index snapshot)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replace the index with a snapshot, checked in full first (the index stays as it was if not)."""
    from histo.snapshots import restore_snapshot
    from histo.store.archive import read_manifest

    settings = settings_of(ctx)
    manifest = read_manifest(snapshot)
    try:
        store = open_index(settings)
    except StoreLockedError as exc:
        raise StoreLockedError(f"{exc}; a restore replaces the index, so stop it first") from None
    with store:
        where, held = store.description, store.count()
        question = (
            f"Replace the index at {where} ({held} points) with {snapshot} "
            f"({manifest['points']} points, taken {manifest.get('created_at', '?')})?"
        )
        if not yes and not typer.confirm(question, default=False):
            console.print("kept the index")
            raise typer.Exit(1)
        restored = restore_snapshot(store, snapshot, settings.encoders_dir)
    for warning in restored.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        figures = {"index": where, "points": manifest["points"], "seconds": round(restored.seconds, 3)}
        typer.echo(json.dumps({**figures, "warnings": restored.warnings}, indent=2))
        return
    console.print(
        f"restored {manifest['points']} points into {where} from {snapshot} in {restored.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


@app.command("migrate", short_help="Copy the index to or from a Qdrant server.")
@domain_errors
def migrate(
    ctx: typer.Context,
    to: str | None = typer.Option(None, "--to", help="Copy the embedded index to this Qdrant server URL."),
    source: str | None = typer.Option(
        None, "--from", help="Copy this Qdrant server's collection into the embedded index."
    ),
    collection: str | None = typer.Option(
        None, "--collection", help="The server's collection (default: HISTO_QDRANT__COLLECTION)."
    ),
    batch: int = typer.Option(256, "--batch", min=1, max=10_000, help="Points per page."),
    sample: int = typer.Option(256, "--sample", min=0, help="Points compared bit for bit at the end."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Copy every point (ids, payloads, vectors) between the embedded index and a Qdrant server."""
    from histo.migration import checkpoint_path, where
    from histo.migration import migrate as copy_points
    from histo.store import open_store

    if (to is None) == (source is None):
        raise InvalidInputError(
            "give exactly one of --to URL (embedded -> server) or --from URL (server -> embedded)"
        )
    settings = settings_of(ctx)
    url = to or source or ""
    with (
        open_store(
            path=settings.index_dir,
            collection=settings.qdrant.collection,
            options=settings.qdrant.index_options(),
        ) as embedded,
        open_store(
            url=url,
            api_key=settings.qdrant.api_key,
            collection=collection or settings.qdrant.collection,
            options=settings.qdrant.index_options(),
        ) as remote,
    ):
        origin, target = (embedded, remote) if to else (remote, embedded)
        checkpoint = checkpoint_path(settings.home / "migrations", origin, target)
        done = _copied_before(checkpoint)
        with tqdm(total=origin.count(), initial=done, desc="migrating", unit="pt", disable=as_json) as bar:
            result = copy_points(origin, target, checkpoint, batch=batch, sample=sample, on_page=bar.update)
        check = result.verification
        figures = {
            "from": where(origin),
            "to": where(target),
            "points": check.points,
            "copied": result.copied,
            "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 3),
            "sampled": check.sampled,
            "identical": check.identical,
            "renormalised": check.renormalised,
        }
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    resumed = f" (resumed after {result.resumed_from})" if result.resumed_from else ""
    console.print(
        f"copied {result.copied} points{resumed} from {figures['from']} to {figures['to']} in "
        f"{result.seconds:.1f} s; verified: the same counts per data set and encoder, {check.sampled} "
        f"sampled points with the same payloads and vectors ({check.identical} bit for bit"
        + (f", {check.renormalised} re-normalised by the destination" if check.renormalised else "")
        + ")",
        highlight=False,
        soft_wrap=True,
    )


def _copied_before(checkpoint: Path) -> int:
    from histo.migration import Checkpoint

    state = Checkpoint.load(checkpoint)
    return state.copied if state is not None else 0
