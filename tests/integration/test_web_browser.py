"""The search page in a real headless browser (Debian's chromium + chromium-driver, via Selenium).

The page is served by uvicorn on a loopback port over the small real index of the gRPC tests
(synthetic BACH and BRACS, colorhist and random encoders). The test uploads a BACH-like image
through the file input and checks what a user would: at least k result cards whose tiles decode,
a label filter that leaves only that label, a hit's detail with its source image, "more like
this", the URL holding the settings, "compare encoders" with one row per encoder, like / unlike
feedback rounds, and fused encoders with the engine's refusals shown on the page.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from histo.data.tiling import TilingConfig
from histo.search import SearchEngine
from histo.store import EdgeStore
from services.web.app import create_app
from services.web.server import WebServer
from tests.browser import CHROMEDRIVER, CHROMIUM, MISSING, chrome, finished, images_decoded, search_after
from tests.search_home import TILE, build_home

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING),
]
K = 10


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[tuple[str, Path]]:
    """The page's URL over a fresh real index, and a BACH-like image to upload."""
    home = tmp_path_factory.mktemp("home")
    build_home(home)
    query = tmp_path_factory.mktemp("upload") / "query.tif"
    shutil.copy(sorted((home / "data" / "bach").rglob("*.tif"))[0], query)
    with EdgeStore(home / "index") as store:
        engine = SearchEngine.load(store, home / "encoders", tiling=TilingConfig(tile_size=TILE))
        server = WebServer(create_app(engine)).start()
        try:
            yield server.url, query
        finally:
            server.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    browser = chrome()
    try:
        yield browser
    finally:
        browser.quit()


def cards(driver: WebDriver, within: str = "#results") -> list[dict[str, str]]:
    found = driver.find_elements(By.CSS_SELECTOR, f"{within} .card")
    return [
        {"id": c.get_attribute("data-id") or "", "label": c.get_attribute("data-label") or ""} for c in found
    ]


def open_page(driver: WebDriver, url: str) -> None:
    """Load the page and wait for its encoders and statistics: they arrive by fetch, after load."""
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#encoder option"))


def settings_in_url(driver: WebDriver) -> dict[str, list[str]]:
    return parse_qs(urlparse(driver.current_url).query)


def test_upload_filter_detail_more_like_this_and_compare(
    driver: WebDriver, page: tuple[str, Path], tmp_path: Path
) -> None:
    url, query = page
    open_page(driver, url)
    encoder = Select(driver.find_element(By.ID, "encoder"))
    assert [o.get_attribute("value") for o in encoder.options] == ["colorhist", "random"]
    assert encoder.first_selected_option.get_attribute("value") == "random"  # the engine's default
    summary = driver.find_element(By.ID, "summary").text
    assert "45 tiles" in summary and "2 data sets" in summary

    # upload through the file input: >= k cards whose tiles decode, the query tiles outlined
    file_input = driver.find_element(By.ID, "file")
    assert search_after(driver, lambda: file_input.send_keys(str(query))) == "done"
    shown = cards(driver)
    assert len(shown) >= K
    tiles = driver.find_elements(By.CSS_SELECTOR, "#results .card img.tile")
    assert len(tiles) == len(shown) and images_decoded(driver, tiles)
    assert images_decoded(driver, [driver.find_element(By.ID, "query-image")])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#query-view .query-box")) == 2  # 128 x 64: 2 tiles
    assert "hits" in driver.find_element(By.ID, "status").text
    driver.save_screenshot("/tmp/web_results.png")

    # a label filter: only that label, and the URL holds it
    Select(driver.find_element(By.ID, "dataset")).select_by_value("bach")
    benign = driver.find_element(By.CSS_SELECTOR, "#labels input[name=label][value=Benign]")
    assert search_after(driver, benign.click) == "done"
    filtered = cards(driver)
    assert filtered and {c["label"] for c in filtered} == {"Benign"}
    settings = settings_in_url(driver)
    assert settings["label"] == ["Benign"] and settings["dataset"] == ["bach"] and settings["k"] == [str(K)]

    # a hit's detail: its source image (decoded) and payload; then "more like this"
    first = driver.find_element(By.CSS_SELECTOR, "#results .card")
    hit_id = first.get_attribute("data-id")
    first.click()
    dialog = driver.find_element(By.ID, "detail")
    assert dialog.get_attribute("open") is not None
    assert images_decoded(driver, [driver.find_element(By.ID, "detail-image")])
    assert hit_id in driver.find_element(By.ID, "detail-payload").text
    more = driver.find_element(By.ID, "more-like-this")
    assert search_after(driver, more.click) == "done"
    assert settings_in_url(driver)["id"] == [hit_id]
    similar = cards(driver)
    assert similar and hit_id not in {c["id"] for c in similar}  # the query tile is never its own hit
    assert {c["label"] for c in similar} == {"Benign"}  # the filter still holds
    assert images_decoded(driver, [driver.find_element(By.ID, "query-image")])

    # the URL alone restores the query: open it afresh
    driver.get(driver.current_url)
    assert finished(driver) == "done"
    assert [c["id"] for c in cards(driver)] == [c["id"] for c in similar]

    # compare encoders: one row per encoder, each with its cards
    compare = driver.find_element(By.ID, "compare")
    assert search_after(driver, compare.click) == "done"
    assert compare.get_attribute("aria-pressed") == "true"
    assert driver.find_element(By.ID, "results").is_displayed() is False
    rows = driver.find_elements(By.CSS_SELECTOR, "#compare-view .encoder-row")
    assert [r.get_attribute("data-encoder") for r in rows] == ["colorhist", "random"]
    for row in rows:
        row_cards = row.find_elements(By.CSS_SELECTOR, ".card")
        assert row_cards and images_decoded(driver, row.find_elements(By.CSS_SELECTOR, "img.tile"))
        assert {c.get_attribute("data-label") for c in row_cards} == {"Benign"}
    assert settings_in_url(driver)["compare"] == ["1"]


def test_like_and_unlike_steer_the_next_search(driver: WebDriver, page: tuple[str, Path]) -> None:
    url, query = page
    open_page(driver, url)
    file_input = driver.find_element(By.ID, "file")
    assert search_after(driver, lambda: file_input.send_keys(str(query))) == "done"
    bar = driver.find_element(By.ID, "feedback-bar")
    assert not bar.is_displayed()
    first, second = driver.find_elements(By.CSS_SELECTOR, "#results .card")[:2]
    liked, unliked = first.get_attribute("data-id"), second.get_attribute("data-id")
    like = first.find_element(By.CSS_SELECTOR, ".like-btn")
    assert like.get_attribute("aria-label") == "more like this"
    like.click()
    second.find_element(By.CSS_SELECTOR, ".unlike-btn").click()
    assert driver.find_element(By.ID, "detail").get_attribute("open") is None  # marking opens nothing
    assert (
        "active" in (like.get_attribute("class") or "").split()
        and like.get_attribute("aria-pressed") == "true"
    )
    assert bar.is_displayed() and "1 liked, 1 unliked" in bar.text

    assert search_after(driver, driver.find_element(By.ID, "feedback-search").click) == "done"
    shown = {c["id"] for c in cards(driver)}
    assert len(shown) >= K and not shown & {liked, unliked}  # the engine leaves marked tiles out
    assert "1 liked, 1 unliked" in bar.text  # the marks stay for the next round
    marks = driver.find_elements(By.CSS_SELECTOR, "#feedback-marks .mark")
    assert {m.get_attribute("data-id") for m in marks} == {liked, unliked}
    assert "feedback" in driver.find_element(By.ID, "status").text

    assert search_after(driver, driver.find_element(By.ID, "feedback-clear").click) == "done"
    assert not bar.is_displayed() and liked in {c["id"] for c in cards(driver)}


def test_fused_encoders_show_who_found_each_hit_and_refusals_show(
    driver: WebDriver, page: tuple[str, Path]
) -> None:
    url, query = page
    open_page(driver, url)
    file_input = driver.find_element(By.ID, "file")
    assert search_after(driver, lambda: file_input.send_keys(str(query))) == "done"
    for name in ("colorhist", "random"):
        box = driver.find_element(By.CSS_SELECTOR, f"#fuse-encoders input[value={name}]")
        assert search_after(driver, box.click) == "done"
    assert settings_in_url(driver)["fuse"] == ["colorhist", "random"]
    assert not driver.find_element(By.ID, "encoder").is_enabled()
    lines = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .card .found-by")]
    assert len(lines) >= K and all(line.startswith("found by: ") for line in lines)
    assert "fused by RRF" in driver.find_element(By.ID, "status").text

    diversity = driver.find_element(By.ID, "diversity")  # MMR re-ranks one encoder: the engine says no
    assert search_after(driver, lambda: diversity.send_keys("0.5", Keys.TAB)) == "error"
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed() and "diversity" in error.text
    assert settings_in_url(driver)["diversity"] == ["0.5"]


def test_a_bad_upload_shows_the_servers_message(
    driver: WebDriver, page: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = page
    open_page(driver, url)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    file_input = driver.find_element(By.ID, "file")
    assert search_after(driver, lambda: file_input.send_keys(str(broken))) == "error"
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed() and "uploaded image" in error.text


@pytest.fixture(scope="module")
def slide_page(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[tuple[str, Path]]:
    """The page over 4 synthetic whole-slide images (colorhist), and a region of one to upload."""
    from histo.data.datasets import scan_dataset
    from histo.data.slides import open_slide
    from histo.data.synth_slides import write_synthetic_slides
    from histo.embedding import Embedder
    from histo.encoders.baselines import make_baseline_artifact
    from histo.ingest import Ingestor, ingest
    from tests.search_home import png

    home = tmp_path_factory.mktemp("slides")
    slides = write_synthetic_slides("bach", home / "wsi", slides_per_class=1, seed=2, size=(1536, 2048))
    make_baseline_artifact("colorhist", home / "encoders" / "colorhist", input_size=64)
    embedder = Embedder.from_artifact(home / "encoders" / "colorhist", device="cpu")
    region = slides[1].regions[0]
    with open_slide(slides[1].path) as opened:
        query = home / "region.png"
        query.write_bytes(png(opened.read(region, 256)))
    with EdgeStore(home / "index") as store:
        records = scan_dataset(home / "wsi", "slides").records
        ingest(
            records,
            Ingestor(store, {"colorhist": embedder}),
            TilingConfig(),
            10**9,
            num_workers=0,
            progress=False,
        )
        engine = SearchEngine.load(store, home / "encoders")
        server = WebServer(create_app(engine)).start()
        try:
            yield server.url, query
        finally:
            server.stop()


def test_where_in_this_slide_shows_the_heatmap(driver: WebDriver, slide_page: tuple[str, Path]) -> None:
    url, query = slide_page
    open_page(driver, url)
    file_input = driver.find_element(By.ID, "file")
    assert search_after(driver, lambda: file_input.send_keys(str(query))) == "done"
    driver.find_element(By.CSS_SELECTOR, "#results .card").click()
    button = driver.find_element(By.ID, "where-in-slide")
    assert button.is_displayed()
    button.click()
    image = driver.find_element(By.ID, "detail-image")
    deadline = time.monotonic() + 60
    while not (image.get_attribute("src") or "").startswith("blob:") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (image.get_attribute("src") or "").startswith("blob:") and images_decoded(driver, [image])
    assert driver.execute_script("return arguments[0].naturalWidth", image) > 300  # the heatmap figure
