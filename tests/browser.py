"""Headless Chromium through Selenium, for the page's browser test and its screenshot script.

Debian's ``chromium`` and ``chromium-driver`` (apt; ``make test`` installs them as it installs
redis) run headless here; as root Chromium needs ``--no-sandbox``. Selenium is pointed at both
binaries, so it never tries to download a browser.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"


def chrome(width: int = 1400, height: int = 1000) -> webdriver.Chrome:
    """A headless Chromium of the system's packages."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        raise RuntimeError(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def state(driver: webdriver.Chrome) -> str:
    return str(driver.execute_script("return document.body.dataset.state"))


def search_after(driver: webdriver.Chrome, action: Callable[[], Any], timeout: float = 60.0) -> str:
    """Do ``action`` (which starts a search) and wait until the page says ``done`` or ``error``."""
    driver.execute_script("document.body.dataset.state = 'stale'")
    action()
    return finished(driver, timeout)


def finished(driver: webdriver.Chrome, timeout: float = 60.0) -> str:
    """Wait until the page's search is ``done`` or ``error`` and say which."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = state(driver)
        if now in ("done", "error"):
            return now
        time.sleep(0.05)
    raise TimeoutError(f"the page did not finish its search within {timeout} s (state {state(driver)!r})")


def images_decoded(driver: webdriver.Chrome, images: list[WebElement], timeout: float = 30.0) -> bool:
    """Whether every image loaded and decoded to real pixels (waits for lazy ones to arrive)."""
    deadline = time.monotonic() + timeout
    script = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    pending = list(images)
    while pending and time.monotonic() < deadline:
        for image in list(pending):
            driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", image)
            if driver.execute_script(script, image):
                pending.remove(image)
        time.sleep(0.05)
    return not pending


__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "MISSING",
    "chrome",
    "finished",
    "images_decoded",
    "search_after",
    "state",
]
