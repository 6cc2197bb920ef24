"""Screenshots of the search page for the README, taken in headless Chromium over a real index.

    .venv/bin/python -m scripts.web_screenshot --home .histo/demo --out docs

Serves ``--home``'s index (after ``histocli demo``: ``.histo/demo``) in-process, uploads one image
of its synthetic BACH-like set (``--label`` picks the class, ``--seed`` the image), and saves
``web_search.png`` (the results grid) and ``web_compare.png`` (every encoder, one row each).
Needs chromium and chromium-driver (``make browser``).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from selenium.webdriver.common.by import By

from histo.search import SearchEngine
from histo.settings import Settings
from histo.store import open_store
from services.web.app import create_app
from services.web.server import WebServer
from tests.browser import chrome, images_decoded, search_after

#: Waiting for every image scrolls strips and panels; a screenshot shows them from the start.
RESET_SCROLL = (
    "window.scrollTo(0, 0); "
    "document.querySelectorAll('*').forEach(e => { e.scrollLeft = 0; e.scrollTop = 0; })"
)


def query_image(home: Path, label: str, seed: int) -> Path:
    """One image of the home's synthetic BACH-like set with that label."""
    images = sorted((home / "data" / "bach").rglob(f"{label}/*.tif"))
    if not images:
        raise SystemExit(f"no {label} images under {home / 'data' / 'bach'}; run `histocli demo` first")
    return random.Random(seed).choice(images)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=Path(".histo/demo"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--label", default="InSitu")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    settings = Settings(home=options.home)
    query = query_image(options.home, options.label, options.seed)
    with open_store(path=settings.index_dir) as store:
        engine = SearchEngine.from_settings(store, settings)
        server = WebServer(create_app(engine)).start()
        driver = chrome(1440, 980)
        try:
            driver.get(f"{server.url}/?dataset=bach&k=12&per_image=1")
            file_input = driver.find_element(By.ID, "file")
            search_after(driver, lambda: file_input.send_keys(str(query.absolute())))
            images_decoded(driver, driver.find_elements(By.CSS_SELECTOR, "img"))
            driver.execute_script(RESET_SCROLL)
            options.out.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(options.out / "web_search.png"))
            search_after(driver, driver.find_element(By.ID, "compare").click)
            images_decoded(driver, driver.find_elements(By.CSS_SELECTOR, "img"))
            driver.execute_script(RESET_SCROLL)
            driver.save_screenshot(str(options.out / "web_compare.png"))
        finally:
            driver.quit()
            server.stop()
    print(f"query {query}; wrote {options.out / 'web_search.png'} and {options.out / 'web_compare.png'}")


if __name__ == "__main__":
    main()
