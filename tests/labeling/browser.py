"""Headless Chromium driven by Selenium through Debian's chromedriver (`make browser`): no driver download."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]


def artifacts() -> Path:
    folder = Path(os.environ.get("RAYLHF_TEST_ARTIFACTS", REPO / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_chromium(width: int = 1100, height: int = 1400) -> webdriver.Chrome:
    profile = tempfile.mkdtemp(prefix="raylhf-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.profile_dir = profile
    return driver


def stop_chromium(driver: webdriver.Chrome) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def wait(driver, condition, timeout: float = 10.0):
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: condition(d))


def status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def cards(driver) -> list:
    """The response cards in the order on screen (best first)."""
    return driver.find_elements(By.CSS_SELECTOR, "#responses > li.response")


def shown_texts(driver) -> list[str]:
    return [card.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent") for card in cards(driver)]


def item_ready(driver) -> bool:
    return bool(driver.execute_script(
        "return document.getElementById('item').hidden === false || document.getElementById('done').hidden === false"))


def errors_in_console(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
