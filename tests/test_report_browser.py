"""The HTML report of ``mmva analyze -f html --embed-video`` played in headless Chromium.

A real analysis of a generated two-sentence talking head (espeak-ng speech over a real face photo);
the report opened from disk: clicking a row, a bar or a point of the timeline seeks the video there,
the utterance playing is highlighted, every row shows its face crop, nothing is fetched from the
network. Screenshots in tests/artifacts/report_player.png and report_playing.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.media import face_frames, silence, speak, write_video
from tests.test_browser import ARTIFACTS, CHROMEDRIVER, CHROMIUM

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="Debian chromium and chromium-driver are not installed")


def two_sentences(path: Path) -> Path:
    """A face photo saying two sentences with a pause between them (about 5 s, 10 fps)."""
    audio = np.concatenate([silence(0.3), speak("I am so happy to see you today."), silence(1.5),
                            speak("This is terrible, I hate it."), silence(0.5)])
    n = int(np.ceil(len(audio) / 16000 * 10))
    return write_video(path, face_frames(n, 96), fps=10.0, audio=audio)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """One analysis through the CLI (with --embed-video), and a report linking the source itself."""
    from typer.testing import CliRunner

    from mmva.analyze.timeline import Timeline
    from mmva.analyze.writers import HTMLWriter
    from mmva.cli import app

    root = tmp_path_factory.mktemp("report")
    clip = two_sentences(root / "media" / "two sentences.mp4")
    out = root / "out"
    result = CliRunner().invoke(app, ["analyze", str(clip), "-f", "json,html", "-o", str(out), "--embed-video", "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "two sentences.mmva.mp4").is_file()
    linked = root / "linked" / "report.html"
    timeline = Timeline.from_dict(json.loads((out / "two sentences.mmva.json").read_text()))
    HTMLWriter().write(timeline, str(linked))  # plays ../media/two%20sentences.mp4
    return {"embedded": out / "two sentences.mmva.html", "linked": linked,
            "json": out / "two sentences.mmva.json"}


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1400", f"--user-data-dir={tmp_path / 'profile'}",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser, script: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    """Poll a JavaScript expression until it is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda b: b.execute_script("return " + script))


def current_time(browser) -> float:  # type: ignore[no-untyped-def]
    return float(browser.execute_script("return document.getElementById('player').currentTime"))


def highlighted(browser) -> list[str]:  # type: ignore[no-untyped-def]
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('tr.utt-row.current')).map(r => r.dataset.i)")


def test_report_plays_and_seeks_on_click(reports: dict[str, Path], browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    data = json.loads(reports["json"].read_text())
    utts = data["utterances"]
    assert len(utts) >= 2, [u["text"] for u in utts]
    browser.get(reports["embedded"].as_uri())
    assert wait_for(browser, "document.getElementById('player').readyState >= 1")  # the copy loads
    assert browser.execute_script("return document.getElementById('player').error") is None
    duration = browser.execute_script("return document.getElementById('player').duration")
    assert duration == pytest.approx(data["duration"], abs=0.3)
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.utt-row")
    assert len(rows) == len(utts)
    # each row shows the face crop the face head read, decoded by the browser
    faces = browser.execute_script(
        "return Array.from(document.querySelectorAll('tr.utt-row')).map(r => {"
        " const img = r.querySelector('img.face'); return img ? img.naturalWidth : 0; })")
    assert all(w >= 48 for w in faces), faces

    # a click on the second row seeks to its start and highlights it
    rows[1].click()
    start, end = utts[1]["start_time"], utts[1]["end_time"]
    wait_for(browser, f"document.getElementById('player').currentTime >= {start - 0.05}")
    assert start - 0.05 <= current_time(browser) < end
    wait_for(browser, "document.querySelector('tr.utt-row.current')")
    assert highlighted(browser) == ["1"]
    assert browser.execute_script("return document.querySelector('rect.utt.current').dataset.i") == "1"
    browser.execute_script("document.getElementById('player').pause()")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report_player.png"))

    # a click on the first bar of the timeline seeks back to the first utterance
    browser.execute_script("window.scrollTo(0, 0)")  # the timeline in view, below the sticky player
    browser.find_element(By.CSS_SELECTOR, 'rect.utt[data-i="0"]').click()
    wait_for(browser, f"document.getElementById('player').currentTime < {utts[1]['start_time']}")
    assert utts[0]["start_time"] - 0.05 <= current_time(browser) < utts[0]["end_time"]
    wait_for(browser, "document.querySelector('tr.utt-row.current') && "
                      "document.querySelector('tr.utt-row.current').dataset.i === '0'")
    browser.execute_script("document.getElementById('player').pause()")

    # a click on an empty point of the timeline (the gap between the sentences) seeks to that time
    gap = (utts[0]["end_time"] + utts[1]["start_time"]) / 2
    browser.execute_script("window.scrollTo(0, 0)")
    svg = browser.find_element(By.CSS_SELECTOR, "svg.seekable")
    box = browser.execute_script("const r = arguments[0].getBoundingClientRect(); "
                                 "return [r.width, r.height, arguments[0].viewBox.baseVal.width, "
                                 "+arguments[0].dataset.left, +arguments[0].dataset.scale];", svg)
    width, height, view_w, left, scale = box
    x = (left + gap * scale) * width / view_w - width / 2  # from the element's centre, in CSS pixels
    y = -height / 2 + 5  # the top lane's row, above the sentiment line
    ActionChains(browser).move_to_element_with_offset(svg, int(round(x)), int(round(y))).click().perform()
    wait_for(browser, f"Math.abs(document.getElementById('player').currentTime - {gap}) < 0.25")
    browser.execute_script("document.getElementById('player').pause()")
    assert highlighted(browser) == []  # nobody speaks in the gap

    # played from the start, the highlight follows the video into the second utterance
    browser.execute_script("const v = document.getElementById('player'); v.currentTime = 0; v.play();")
    wait_for(browser, "document.querySelector('tr.utt-row.current') && "
                      "document.querySelector('tr.utt-row.current').dataset.i === '0'", timeout=20)
    wait_for(browser, "document.querySelector('tr.utt-row.current') && "
                      "document.querySelector('tr.utt-row.current').dataset.i === '1'", timeout=20)
    assert browser.execute_script("return document.getElementById('player').paused") is False
    playhead = browser.execute_script("return +document.querySelector('svg.seekable line.playhead').getAttribute('x1')")
    assert playhead > left + utts[1]["start_time"] * scale - 1
    browser.save_screenshot(str(ARTIFACTS / "report_playing.png"))

    # nothing came from the network: the copy beside the report and inline images only
    names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [n for n in names if n.startswith(("http:", "https:"))], names
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_report_plays_the_analysed_file_by_relative_path(reports: dict[str, Path], browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(reports["linked"].as_uri())
    assert browser.execute_script("return document.getElementById('player').getAttribute('src')") == \
        "../media/two%20sentences.mp4"
    assert wait_for(browser, "document.getElementById('player').readyState >= 1")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.utt-row")
    rows[-1].click()
    start = float(rows[-1].get_attribute("data-start"))
    wait_for(browser, f"document.getElementById('player').currentTime >= {start - 0.05}")
    time.sleep(0.2)
    assert highlighted(browser) == [rows[-1].get_attribute("data-i")]
