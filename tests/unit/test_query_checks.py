"""Searches that find nothing say why; the default encoder is one with vectors for the filter; a
query image is searched by its tissue, spread over all of it, and the result says how."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo.data.datasets import scan_dataset
from histo.data.synth import write_synthetic
from histo.data.tiling import TilingConfig
from histo.embedding import Embedder
from histo.errors import InvalidInputError, NoMatchError
from histo.ingest import Ingestor, ingest
from histo.query_checks import MIN_REFRESH_S
from histo.query_image import file_mpp, spread
from histo.search import SearchEngine
from histo.store import EdgeStore, SearchFilter
from tests.helpers import tissue_array
from tests.search_home import TILE, build_home, png


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bach and bracs with colorhist and random; a third data set, 'extra', with colorhist only;
    bracs without its one DCIS tile of the val split (so that DCIS and val exist, not together)."""
    home = tmp_path_factory.mktemp("home")
    build_home(home)
    write_synthetic("crc", home / "data" / "crc", slides=2, tiles_per_slide=3, seed=2, tile_size=TILE)
    with EdgeStore(home / "index") as store:
        store.delete(r.id for r in store.scroll(SearchFilter("bracs", labels=("DCIS",), split="val")))
        records = scan_dataset(home / "data" / "crc", "crc", "extra").records
        encoders = {"colorhist": Embedder.from_artifact(home / "encoders" / "colorhist")}
        ingest(records, Ingestor(store, encoders), TilingConfig(tile_size=TILE), 10**8, 0, False)
    return home


@pytest.fixture(scope="module")
def engine(home: Path) -> Iterator[SearchEngine]:
    with EdgeStore(home / "index") as store:
        yield SearchEngine.load(store, home / "encoders", tiling=TilingConfig(tile_size=TILE))


def query(engine: SearchEngine, **kwargs: object) -> object:
    vector = [1.0] * engine.embedder("colorhist").dim
    return engine.search(vector=vector, encoder=kwargs.pop("encoder", "colorhist"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flt", "said"),
    [
        (
            SearchFilter(dataset="Bracs"),
            "no data set 'Bracs' in the index (did you mean 'bracs'?); it holds: bach (",
        ),
        (SearchFilter(dataset="brac"), "(did you mean 'bracs'?)"),
        (
            SearchFilter(dataset="bracs", labels=("dcis",)),
            "no tile in data set bracs is labelled 'dcis' (did you mean 'DCIS'?); its labels: ",
        ),
        (
            SearchFilter(dataset="bach", labels=("DCIS",)),
            "no tile in data set bach is labelled 'DCIS'; its labels: Benign (",
        ),
        (
            SearchFilter(labels=("Normal", "invasive")),
            "no tile in the index is labelled 'invasive' (did you mean 'Invasive'?)",
        ),
        (
            SearchFilter(dataset="bracs", split="tset"),
            "is in split 'tset' (did you mean 'test'?); its splits: ",
        ),
        (
            SearchFilter(dataset="bach", split="test"),
            "data set bach is in split 'test'; it has no splits; drop --split",
        ),
    ],
)
def test_a_value_the_index_does_not_hold_is_named_with_what_there_is(
    engine: SearchEngine, flt: SearchFilter, said: str
) -> None:
    with pytest.raises(NoMatchError) as caught:
        query(engine, filter=flt)
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_an_encoder_without_vectors_there_says_which_have_them(engine: SearchEngine) -> None:
    with pytest.raises(NoMatchError) as caught:
        engine.search(
            vector=[1.0] * engine.embedder("random").dim, encoder="random", filter=SearchFilter("extra")
        )
    message = str(caught.value)
    assert "encoder random has no vectors for the" in message and "tiles of data set extra" in message
    assert "encoders that have: colorhist (" in message and "-e random" in message


def test_the_default_encoder_is_one_with_vectors_for_the_filter(engine: SearchEngine) -> None:
    image = png(tissue_array(TILE, TILE, seed=4))
    assert engine.default == "random"  # random init ranks before the colour histogram
    assert engine.search(image=image, top_k=2).encoder == "random"
    chosen = engine.search(image=image, top_k=2, filter=SearchFilter(dataset="extra"))
    assert chosen.encoder == "colorhist" and {h.payload["dataset"] for h in chosen.hits} == {"extra"}


def test_parts_that_exist_but_not_together_and_everything_excluded(engine: SearchEngine, home: Path) -> None:
    with pytest.raises(NoMatchError, match="no tile matches data set bracs, label DCIS, split val together"):
        query(engine, filter=SearchFilter(dataset="bracs", labels=("DCIS",), split="val"))
    extra = list(engine.store.scroll(SearchFilter("extra")))
    images = sorted({r.payload["image_id"] for r in extra})
    others = tuple(i for i in images if i != extra[0].payload["image_id"])
    with pytest.raises(NoMatchError, match="are all excluded from this search"):
        engine.search(
            point_id=extra[0].id, encoder="colorhist", filter=SearchFilter("extra", exclude_image_ids=others)
        )


def test_data_ingested_after_the_engine_started_is_found(
    engine: SearchEngine, home: Path, tmp_path: Path
) -> None:
    write_synthetic("bach", tmp_path / "late", slides=1, tiles_per_slide=4, seed=5, tile_size=TILE)
    store = engine.store
    later = SearchEngine.load(store, home / "encoders", tiling=TilingConfig(tile_size=TILE), warm_up=False)
    with pytest.raises(NoMatchError):
        query(later, filter=SearchFilter("late"))
    records = scan_dataset(tmp_path / "late", "bach", "late").records
    encoders = {"colorhist": Embedder.from_artifact(home / "encoders" / "colorhist")}
    ingest(records, Ingestor(store, encoders), TilingConfig(tile_size=TILE), 10**8, 0, False)
    time.sleep(MIN_REFRESH_S)  # an unknown value asks the index again, at most once a second
    try:
        found = later.search(vector=[1.0] * 512, encoder="colorhist", filter=SearchFilter("late"))
        assert {h.payload["dataset"] for h in found.hits} == {"late"}
    finally:
        store.delete(r.id for r in store.scroll(SearchFilter("late")))


# ------------------------------------------------------------------------------------------------
# The query image
# ------------------------------------------------------------------------------------------------


def test_a_large_image_is_searched_over_all_of_its_tissue(engine: SearchEngine) -> None:
    """The issue's case at a smaller scale: 40 x 40 tiles of tissue, at most 64 searched; before,
    the 64 came from the top two rows (ties in tissue fall to raster order)."""
    side = 40 * TILE
    pink = Image.new("RGB", (side, side), (200, 120, 170))
    boxes, tiles = engine.query_tiles(pink)
    assert len(boxes) == len(tiles) == 64
    rows = {b.y for b in boxes}
    assert min(rows) == 0 and max(rows) >= 38 * TILE and len(rows) >= 30  # top to bottom
    assert len({b.x for b in boxes}) >= 20  # and across


def test_the_result_says_how_many_tiles_of_how_many_and_how(engine: SearchEngine) -> None:
    crowded = np.tile(tissue_array(TILE, TILE), (12, 12, 1))  # 144 tissue tiles
    result = engine.search(image=png(crowded), encoder="colorhist", top_k=1)
    shown = result.query_image
    assert shown is not None and (shown.grid_tiles, shown.tissue_tiles, shown.searched) == (144, 144, 64)
    assert shown.sampling == "spread" and len(result.query_boxes) == 64
    assert (
        "searched as 64 of its 144 tiles with tissue, spread evenly over the whole image" in shown.sentence()
    )
    few = engine.search(image=png(tissue_array(2 * TILE, TILE)), encoder="colorhist", top_k=1).query_image
    assert few is not None and few.sampling == "all" and few.searched == 2


@pytest.mark.parametrize(
    "blank",
    [
        np.full((3 * TILE, 3 * TILE, 3), 255, np.uint8),  # white glass
        np.full((3 * TILE, 3 * TILE, 3), 128, np.uint8),  # flat grey
        np.zeros((TILE, TILE, 4), np.uint8),  # fully transparent
    ],
    ids=["white", "grey", "transparent"],
)
def test_an_image_without_tissue_is_refused(engine: SearchEngine, blank: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match=r"holds no tissue: none of its \d+ tiles? reaches"):
        engine.search(image=png(blank), encoder="colorhist")


def test_an_image_too_small_for_a_tile_of_tissue_is_refused(engine: SearchEngine) -> None:
    with pytest.raises(InvalidInputError, match="less tissue than one 64x64 px tile of the index holds"):
        engine.search(image=png(tissue_array(40, 40)), encoder="colorhist")
    assert engine.search(image=png(tissue_array(50, 50)), encoder="colorhist", top_k=1).hits  # enough


def encoded(array: np.ndarray, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_the_query_resolution_is_given_read_from_the_file_or_assumed(engine: SearchEngine) -> None:
    pixels = tissue_array(TILE, TILE)
    tiff = encoded(pixels, "TIFF", resolution=20000.0, resolution_unit=3)  # px per cm: 0.5 µm/px
    assert file_mpp(tiff) == pytest.approx(0.5)
    assert file_mpp(encoded(pixels, "PNG", dpi=(50800, 50800))) == pytest.approx(0.5)
    assert file_mpp(encoded(pixels, "JPEG", dpi=(72, 72))) is None  # a screen density, not a scan
    from_file = engine.search(image=tiff, encoder="colorhist", top_k=1).query_image
    assert from_file is not None and (from_file.mpp, from_file.mpp_source) == (pytest.approx(0.5), "file")
    given = engine.search(image=tiff, mpp=0.25, encoder="colorhist", top_k=1).query_image
    assert given is not None and (given.mpp, given.mpp_source) == (0.25, "given")
    assumed = engine.search(image=png(pixels), encoder="colorhist", top_k=1).query_image
    assert assumed is not None and (assumed.mpp, assumed.mpp_source) == (None, "assumed")
    assert "assumed to be the indexed images'" in assumed.sentence()
    with pytest.raises(InvalidInputError, match="must be a positive number"):
        engine.search(image=png(pixels), mpp=-1.0, encoder="colorhist")


def test_spread_takes_evenly_spaced_indices_first_to_last() -> None:
    assert spread(5, 10) == [0, 1, 2, 3, 4]
    assert spread(100, 5) == [0, 25, 50, 74, 99]
    assert spread(7, 1) == [0]
