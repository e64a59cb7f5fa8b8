"""The web page's Live tab in headless Chromium with a fake microphone playing generated speech
(``--use-file-for-fake-audio-capture``) and a fake camera, against a real server: utterances appear
on the rolling timeline, Stop keeps them downloadable as JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.media import silence, speak, write_wav
from tests.serve_server import SERVE_KEY, ServerProcess
from tests.test_browser import ARTIFACTS, CHROMEDRIVER, CHROMIUM

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="Debian chromium and chromium-driver are not installed")


@pytest.fixture()
def live_browser(tmp_path: Path) -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    wav = write_wav(tmp_path / "mic.wav", np.concatenate([silence(0.5), speak("I am so happy to see you today."),
                                                          silence(1.5)]))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1400", f"--user-data-dir={tmp_path / 'profile'}",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


def test_live_tab_shows_utterances_and_keeps_them(serve_server: ServerProcess, live_browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser = live_browser
    browser.get(serve_server.url + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(EC.visibility_of_element_located((By.ID, "api-key"))).send_keys(SERVE_KEY)
    browser.find_element(By.ID, "tab-live").click()
    assert browser.find_element(By.ID, "live-view").is_displayed()
    assert not browser.find_element(By.ID, "file-view").is_displayed()
    browser.find_element(By.ID, "live-start").click()
    rows = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#live-utterances tbody tr"))
    assert browser.find_elements(By.CSS_SELECTOR, "#live-timeline-svg rect.utterance-bar")
    cells = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
    assert "happy" in cells[2].lower() and cells[3].split(" ")[0] in (
        "anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    assert "text" in cells[5] and "audio" in cells[5]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "serve_live.png"))
    browser.find_element(By.ID, "live-stop").click()
    wait.until(lambda b: "stopped" in b.find_element(By.ID, "live-status").text)
    browser.find_element(By.ID, "live-download").click()
    deadline = time.monotonic() + 30
    files: list[Path] = []
    while time.monotonic() < deadline and not files:
        files = list(browser.downloads.glob("*.json"))
        time.sleep(0.2)
    assert files, "the JSON download did not arrive"
    result = json.loads(files[0].read_text())
    assert result["segmentation"] == "live" and len(result["utterances"]) >= len(rows)
    assert "happy" in result["utterances"][0]["text"].lower() and result["utterances"][0]["emotions"]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
