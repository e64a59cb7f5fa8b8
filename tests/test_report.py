"""The HTML report's player: the media linked relative to the report or copied beside it
(``--embed-video``), seek targets on rows and bars, and the face crop the face head read."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmva.analyze.timeline import Timeline, apply_prediction
from mmva.analyze.writers import HTMLWriter, get_writer, media_link, write_outputs
from mmva.io.media import probe
from tests.media import face_frames, rotate_mp4, tone, write_video


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _pred(emotion: int, crop: np.ndarray | None = None) -> dict:
    e = np.full(7, 0.05, np.float32)
    e[emotion] = 0.7
    s = np.array([0.2, 0.3, 0.5], np.float32)
    mods = ["text", "video"] if crop is not None else ["text"]
    out = {"emotion": e, "sentiment": s, "modalities": mods,
           "per_modality": {m: {"emotion": e.tolist(), "sentiment": s.tolist()} for m in mods}}
    if crop is not None:
        out["face_crop"] = crop
    return out


def _timeline(source: str, crops: list[np.ndarray | None] | None = None) -> Timeline:
    from mmva.types import Utterance

    utts = [Utterance(text="I love it.", start_time=0.2, end_time=1.0),
            Utterance(text="Oh no.", start_time=1.4, end_time=2.6)]
    for u, crop, emo in zip(utts, crops or [None, None], (3, 5)):
        apply_prediction(u, _pred(emo, crop))
    return Timeline(source=source, duration=3.0, utterances=utts, segmentation="asr",
                    media={"has_video": True, "has_audio": True})


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "media" / "my talk.mp4", face_frames(30), fps=10.0, audio=tone(3.0))


def _player(html: str) -> dict[str, str | None]:
    videos = [a for t, a in _tags(html) if t == "video"]
    assert len(videos) == 1
    return videos[0]


def test_the_player_links_the_analysed_file_relative_to_the_report(clip: Path, tmp_path: Path) -> None:
    report = tmp_path / "reports" / "talk.mmva.html"
    HTMLWriter().write(_timeline(str(clip)), str(report))
    html = report.read_text()
    src = _player(html)["src"]
    assert src == "../media/my%20talk.mp4"  # relative, percent-encoded: the pair can be moved together
    assert (report.parent / src.replace("%20", " ")).resolve() == clip.resolve()
    assert 'id="player-box" hidden' not in html and "mmvaReport" in html
    tags = _tags(html)
    rows = [a for t, a in tags if t == "tr" and a.get("class") == "utt-row"]
    assert [(r["data-start"], r["data-end"]) for r in rows] == [("0.2", "1.0"), ("1.4", "2.6")]
    bars = [a for t, a in tags if t == "rect" and a.get("class") == "utt"]
    assert [b["data-start"] for b in bars] == ["0.2", "1.4"] and [b["data-i"] for b in bars] == ["0", "1"]
    svg = next(a for t, a in tags if t == "svg" and a.get("aria-label") == "emotion timeline")
    assert svg["class"] == "seekable" and float(svg["data-scale"]) > 0
    # still nothing fetched from elsewhere: the only source is the local media file
    assert "http://" not in html and "https://" not in html
    assert [a["src"] for t, a in tags if a.get("src")] == [src]


def test_no_player_without_reachable_media(tmp_path: Path) -> None:
    html = get_writer("html").to_string(_timeline("talks/interview.mp4"))  # no path: nothing to link
    assert "src" not in _player(html) and 'id="player-box" hidden' in html
    report = tmp_path / "r.html"
    HTMLWriter().write(_timeline(str(tmp_path / "missing.mp4")), str(report))
    assert "src" not in _player(report.read_text())
    assert media_link(str(tmp_path / "missing.mp4"), str(report)) is None
    assert media_link("s3://bucket/talk.mp4", str(report)) is None
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert media_link(str(notes), str(report)) is None  # a transcript has nothing to play
    # a transcript's timeline has no times: no player, no seek script
    from mmva.types import Utterance

    text_only = Timeline(source=str(notes), utterances=[Utterance(text="hello")], segmentation="transcript")
    html = get_writer("html").to_string(text_only)
    assert "<video" not in html and "<script" not in html


def test_embed_video_writes_a_small_playable_copy_beside_the_report(clip: Path, tmp_path: Path) -> None:
    big = write_video(tmp_path / "big.mp4", np.repeat(np.repeat(face_frames(20, 160), 4, 1), 6, 2), fps=20.0,
                      audio=tone(1.0))  # stored 960x640, 20 fps
    rotate_mp4(big, 90)  # a phone video: the copy must be upright
    out = tmp_path / "out"
    written = write_outputs(_timeline(str(big)), str(out), ["json", "html"], embed_video=True)
    assert written == [str(out / "big.mmva.mp4"), str(out / "big.mmva.json"), str(out / "big.mmva.html")]
    src, copy = probe(big), probe(out / "big.mmva.mp4")
    assert (src.width, src.height, src.rotation) == (640, 960, 90)  # as displayed: upright
    assert copy.has_video and copy.has_audio and copy.rotation == 0
    assert (copy.width, copy.height) == (320, 480)  # turned upright, longer side 480
    assert copy.duration == pytest.approx(src.duration, abs=0.15)
    assert _player((out / "big.mmva.html").read_text())["src"] == "big.mmva.mp4"
    assert "src" not in _player(get_writer("html").to_string(_timeline(str(big))))  # the writer alone: no copy


def test_each_row_shows_the_face_crop_the_face_head_read(tmp_path: Path) -> None:
    crop = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 251).astype(np.uint8)
    timeline = _timeline("talk.mp4", crops=[crop, None])
    uri = timeline.utterances[0].extra["face_crop"]
    assert uri.startswith("data:image/png;base64,") and "face_crop" not in timeline.utterances[1].extra
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, crop)  # lossless: the very pixels
    data = json.loads(get_writer("json").to_string(timeline))
    assert data["utterances"][0]["face_crop"] == uri  # in the JSON too, for the serve page and other readers
    again = Timeline.from_dict(data)
    html = get_writer("html").to_string(again)
    imgs = [a for t, a in _tags(html) if t == "img"]
    assert [a["src"] for a in imgs] == [uri] and imgs[0]["class"] == "face"
    assert "joy" in imgs[0]["title"]  # what the face said, on hover
    # a JSON from elsewhere cannot smuggle a script URL into the report
    data["utterances"][0]["face_crop"] = "javascript:alert(1)"
    assert "javascript:" not in get_writer("html").to_string(Timeline.from_dict(data))


def test_the_face_head_reports_the_crop_it_classified() -> None:
    from skimage.data import astronaut

    from mmva.encoders.face import detect_and_classify
    from mmva.model.default import DefaultModel

    frames = np.stack([astronaut(), astronaut()[:, ::-1].copy()])
    face = detect_and_classify(frames)
    assert face is not None and face.crops.shape[0] == face.n_frames_with_face == 2
    crop = face.telling_crop()
    assert crop.dtype == np.uint8 and crop.ndim == 2
    top = int(np.argmax(face.probs))
    best = int(np.argmax(face.frame_probs[:, top]))  # the frame most sure of the face's verdict
    np.testing.assert_array_equal(crop, face.crops[best])
    probs = DefaultModel.video_probs(frames)
    np.testing.assert_array_equal(probs["crop"], crop)


def test_embed_video_needs_the_html_format(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmva.cli import app

    result = CliRunner().invoke(app, ["analyze", "x.mp4", "-f", "json", "--embed-video", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "html" in result.output
