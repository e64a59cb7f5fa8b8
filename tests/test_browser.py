"""The web page in a real browser: headless Debian Chromium (Selenium + chromedriver) against a real server.

Uploads a generated talking-head video, waits for the timeline and the utterance table, downloads
the SRT, and keeps a screenshot in tests/artifacts/serve_timeline.png.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.media import talking_head
from tests.serve_server import SERVE_KEY, ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
KEY = SERVE_KEY

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="Debian chromium and chromium-driver are not installed")


@pytest.fixture()
def server(serve_server: ServerProcess) -> ServerProcess:
    return serve_server


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1400", f"--user-data-dir={tmp_path / 'profile'}"):
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


def test_upload_video_and_see_timeline(server: ServerProcess, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    video = talking_head(tmp_path / "hello.mp4", "I am so happy to see you today")
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 120)
    key_input = wait.until(EC.visibility_of_element_located((By.ID, "api-key")))  # the server wants a key
    key_input.send_keys(KEY)
    browser.find_element(By.ID, "file").send_keys(str(video))
    browser.find_element(By.ID, "submit").click()

    bars = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#timeline-svg rect.utterance-bar")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#utterances tbody tr")
    assert len(bars) == len(rows) >= 1
    first_row = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
    assert "happy" in first_row[2].lower()  # the transcript made it to the table
    assert first_row[3].split(" ")[0] in ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    assert "done" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "progress").text == "100%"
    assert "hello.mp4" in browser.find_element(By.ID, "source").text

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_timeline.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    browser.find_element(By.ID, "download-srt").click()
    deadline = time.monotonic() + 30
    files: list[Path] = []
    while time.monotonic() < deadline and not files:
        files = [p for p in browser.downloads.glob("*.srt")]
        time.sleep(0.2)
    assert files, "the SRT download did not arrive"
    srt = files[0].read_text()
    assert "-->" in srt and "happy" in srt.lower()

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
