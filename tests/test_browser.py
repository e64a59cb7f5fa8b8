"""The web page in a real browser: headless Debian Chromium (Selenium + chromedriver) against a real server.

Drops a generated talking-head video on the page, follows the job's progress in the recent-jobs
list, watches the report (the HTML report of ``mmva analyze``) play the uploaded file, seeks by
clicking an utterance, downloads the SRT and analyses typed sentences; screenshots in
tests/artifacts/serve_report.png and serve_text.png.
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


DROP = """
const file = document.getElementById("drop-source").files[0];
const data = new DataTransfer();
data.items.add(file);
const zone = document.getElementById("drop-zone");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
}
"""


def drop_file(browser, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Drag and drop ``path`` on the page's drop zone (WebDriver cannot drag from the desktop: the
    file is read through a hidden input of the test's own, then dropped as a real DragEvent)."""
    from selenium.webdriver.common.by import By

    browser.execute_script("const i = document.createElement('input'); i.type = 'file'; i.id = 'drop-source'; "
                           "i.style.display = 'none'; document.body.appendChild(i);")
    browser.find_element(By.ID, "drop-source").send_keys(str(path))
    browser.execute_script(DROP)


def job_rows(browser) -> list[dict]:  # type: ignore[no-untyped-def]
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#jobs tbody tr')).map(tr => ({id: tr.dataset.id, "
        "state: tr.dataset.state, text: tr.innerText}))")


def test_drop_a_video_follow_the_job_and_watch_the_report(server: ServerProcess, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    video = talking_head(tmp_path / "hello.mp4", "I am so happy to see you today")
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 120)
    key_input = wait.until(EC.visibility_of_element_located((By.ID, "api-key")))  # the server wants a key
    key_input.send_keys(KEY)
    drop_file(browser, video)

    # the recent-jobs list follows the job: its state and progress, until done
    seen: list[dict] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = [r for r in job_rows(browser) if "hello.mp4" in r["text"]]
        if rows:
            seen.append(rows[0])
            if rows[0]["state"] in ("done", "failed", "cancelled"):
                break
        time.sleep(0.1)
    assert seen and seen[-1]["state"] == "done", seen
    assert "100%" in seen[-1]["text"]
    assert any(r["state"] in ("queued", "running") and "%" in r["text"] for r in seen), seen

    # the report plays the dropped file; a click on an utterance seeks there and highlights it
    wait.until(lambda b: "utterance(s)" in b.find_element(By.ID, "status").text)  # "done: 1 utterance(s)"
    assert browser.find_element(By.ID, "progress").text == "100%"
    assert "hello.mp4" in browser.find_element(By.ID, "source").text
    browser.switch_to.frame(browser.find_element(By.ID, "report-frame"))
    wait.until(lambda b: b.execute_script("return document.getElementById('player').readyState >= 1"))
    assert browser.execute_script("return document.getElementById('player').src").startswith("blob:")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.utt-row")
    assert rows and "happy" in rows[0].text.lower()
    assert browser.find_elements(By.CSS_SELECTOR, "tr.utt-row img.face")  # the face crop the head read
    browser.execute_script("const v = document.getElementById('player'); v.muted = true; v.currentTime = 1.5;")
    wait.until(lambda b: b.execute_script("return document.getElementById('player').currentTime") >= 1.4)
    rows[0].click()
    start = float(rows[0].get_attribute("data-start"))
    WebDriverWait(browser, 10, poll_frequency=0.05).until(
        lambda b: b.execute_script("return document.getElementById('player').currentTime") < 1.4)
    assert browser.execute_script("return document.getElementById('player').currentTime") >= start - 0.05
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "tr.utt-row.current"))
    browser.execute_script("document.getElementById('player').pause()")
    browser.switch_to.default_content()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_report.png"
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

    # quick sentences: the same report, one row per line, no player (no media, no times)
    browser.find_element(By.ID, "quick-text").send_keys("Thank you so much, this is wonderful!\nGet out of my way.")
    browser.find_element(By.ID, "text-submit").click()
    wait.until(lambda b: "done: 2 sentence(s)" in b.find_element(By.ID, "status").text)
    browser.switch_to.frame(browser.find_element(By.ID, "report-frame"))
    texts = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "tr.utt-row")]
    assert len(texts) == 2 and "wonderful" in texts[0] and "way" in texts[1]
    assert not browser.find_elements(By.TAG_NAME, "video")
    browser.switch_to.default_content()
    browser.save_screenshot(str(ARTIFACTS / "serve_text.png"))

    # the finished job in the list brings its report back, still playing the file dropped earlier
    next(tr for tr in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr") if "hello.mp4" in tr.text).click()
    wait.until(lambda b: "utterance(s)" in b.find_element(By.ID, "status").text)
    browser.switch_to.frame(browser.find_element(By.ID, "report-frame"))
    wait.until(lambda b: b.execute_script("const v = document.getElementById('player'); "
                                          "return v && v.src.startsWith('blob:') && v.readyState >= 1"))
    browser.switch_to.default_content()

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
