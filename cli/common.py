"""What every command shares: the settings from the root callback and one-line domain errors."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

from histo.data.tiling import TilingConfig
from histo.errors import HistoError
from histo.settings import Settings


class Fusion(StrEnum):
    """How several encoders' candidate lists are fused (``histo.store.base.FUSIONS``)."""

    rrf = "rrf"
    dbsf = "dbsf"


if TYPE_CHECKING:
    from histo.store.base import VectorStore

P = ParamSpec("P")
R = TypeVar("R")
err_console = Console(stderr=True)
console = Console()


def settings_of(ctx: typer.Context) -> Settings:
    """The Settings loaded once by the root callback."""
    root = ctx.find_root()
    assert isinstance(root.obj, Settings), "root callback did not run"  # programming error, not input
    return root.obj


def domain_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn histo's own errors into one red line and exit code 1 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except HistoError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def tiling_config(
    settings: Settings,
    tile_size: int | None = None,
    stride: int | None = None,
    target_mpp: float | None = None,
    min_tissue: float | None = None,
) -> TilingConfig:
    """Settings' tiling, overridden by whichever command-line options were given."""
    base = settings.tiling
    return TilingConfig(
        tile_size=tile_size or base.tile_size,
        stride=stride or base.stride,
        target_mpp=target_mpp or base.target_mpp,
        min_tissue=base.min_tissue if min_tissue is None else min_tissue,
    )


TILE_SIZE = typer.Option(
    None, "--tile-size", help="Tile edge in pixels (default 224, HISTO_TILING__TILE_SIZE)."
)
STRIDE = typer.Option(None, "--stride", help="Step between tiles in pixels (default: the tile size).")
TARGET_MPP = typer.Option(
    None, "--target-mpp", help="Resample tiles to this µm/px when the source's is known."
)
MIN_TISSUE = typer.Option(None, "--min-tissue", help="Drop tiles with less tissue than this fraction (0..1).")


def open_index(settings: Settings) -> VectorStore:
    """The configured store: a Qdrant server when HISTO_QDRANT__URL is set, else the embedded index."""
    from histo.store import open_store

    return open_store(
        url=settings.qdrant.url,
        api_key=settings.qdrant.api_key,
        path=settings.index_dir,
        collection=settings.qdrant.collection,
        options=settings.qdrant.index_options(),
    )


def become(module: str, args: list[str]) -> NoReturn:
    """Replace this process with ``python -m module args`` (``os.execv``): a runtime the container
    starts by module name, which the CLI must not import (DESIGN.md §2)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *args])
