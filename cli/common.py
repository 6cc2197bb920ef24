"""What every command shares: the settings from the root callback and one-line domain errors."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from histo.data.tiling import TilingConfig
from histo.errors import HistoError, InvalidInputError
from histo.settings import Settings


class Fusion(StrEnum):
    """How several encoders' candidate lists are fused (``histo.store.base.FUSIONS``)."""

    rrf = "rrf"
    dbsf = "dbsf"


if TYPE_CHECKING:
    from histo.data.datasets import ScanResult
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


#: What Ctrl-C prints (exit code 130, as a shell reports SIGINT): every command can be run again.
INTERRUPTED = "interrupted; rerun the same command to resume"
INTERRUPTED_EXIT = 130


def domain_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn histo's own errors into one red line and exit code 1 instead of a traceback, and
    Ctrl-C into one line and exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except HistoError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
            raise typer.Exit(INTERRUPTED_EXIT) from None

    return wrapper


def app(help: str) -> typer.Typer:
    """A command group as every group of histocli is made: plain help (flags without a type,
    paragraphs wrapped to the terminal, usage errors on one line)."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None, add_completion=False)


def positive(value: float | None) -> float | None:
    """An option callback: None (not given) or a number above 0, else a one-line usage error."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not a positive number")
    return value


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
    None,
    "--tile-size",
    min=16,
    max=4096,
    help="Tile edge in pixels, 16 to 4096 (default 224, HISTO_TILING__TILE_SIZE).",
)
STRIDE = typer.Option(None, "--stride", min=1, help="Step between tiles in pixels (default: the tile size).")
TARGET_MPP = typer.Option(
    None,
    "--target-mpp",
    callback=positive,
    help="Resample tiles to this µm/px (above 0) when the source's is known.",
)
MIN_TISSUE = typer.Option(
    None, "--min-tissue", min=0.0, max=1.0, help="Drop tiles with less tissue than this fraction (0 to 1)."
)


@dataclass(frozen=True)
class Target:
    """What an ingest reads: the folder, its layout, and the data set name it gets in the index."""

    root: Path
    layout: str
    name: str

    def scan(self, mpp: float | None = None) -> ScanResult:
        """Every image of the folder as this data set (``--mpp`` for files that record none)."""
        from histo.data.datasets import scan_dataset

        return scan_dataset(self.root, self.layout, self.name).with_mpp(mpp)


def pick_layout(layout: str | None, dataset: str | None) -> str:
    """``--layout``, or its old spelling ``--dataset``; one of them, and a known one."""
    from histo.data.datasets import adapter_for

    if layout and dataset and layout != dataset:
        raise InvalidInputError(f"--layout {layout} and --dataset {dataset} disagree; give --layout only")
    chosen = layout or dataset
    if not chosen:
        raise InvalidInputError(
            "give the folder's layout: --layout bracs, bach, crc, folder (class sub-folders) or slides"
        )
    return adapter_for(chosen).name


def table(
    columns: Sequence[str],
    title: str | None = None,
    numeric: Collection[str] = (),
    whole: Mapping[str, int] | None = None,
) -> Table:
    """A table whose cells wrap instead of being cut with "…": names and ids go from tables into
    commands, so they must print whole. ``whole``: columns that keep at least this many
    characters on one line (a point id: 36)."""
    made = Table(title=title)
    for column in columns:
        made.add_column(
            column,
            justify="right" if column in numeric else "left",
            overflow="fold",
            min_width=(whole or {}).get(column),
        )
    return made


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
