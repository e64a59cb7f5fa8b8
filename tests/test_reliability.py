"""Issue 9 cases that no other test file covers (the full table is docs/reliability.md):
property tests for the SRT and VTT readers and writers, and several faces in a frame through
`mmva analyze`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmva.analyze.subtitles import SubtitleError, read_subtitles
from mmva.analyze.timeline import Timeline
from mmva.analyze.writers import get_writer
from mmva.types import Utterance

# -- SRT / VTT: property-based --------------------------------------------------------------------
_WORDS = st.text(alphabet=st.sampled_from(list("abcdefXYZ019,.!?'’é")), min_size=1, max_size=8)
_CUE_TEXT = st.lists(_WORDS, min_size=1, max_size=6).map(" ".join)
# (start ms, duration ms, text); starts kept distinct so the reader's time order is unambiguous
_CUES = st.lists(st.tuples(st.integers(0, 10 * 3600 * 1000 - 1), st.integers(1, 60_000), _CUE_TEXT),
                 min_size=1, max_size=6, unique_by=lambda c: c[0])


def _srt_time(ms: int) -> str:
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _vtt_time(ms: int) -> str:
    return _srt_time(ms).replace(",", ".")


def _expected(cues: list[tuple[int, int, str]]) -> list[tuple[float, float, str]]:
    return [(s / 1000, (s + d) / 1000, text) for s, d, text in sorted(cues)]


def _read(path: Path) -> list[tuple[float, float, str]]:
    return [(u.start_time, u.end_time, u.text) for u in read_subtitles(str(path))]


_PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_PROP
@given(_CUES, st.booleans())
def test_srt_and_vtt_readers_round_trip_any_cues(tmp_path, cues, crlf):
    """Hand-written files (either line ending, cues in any order) read back to the same times and text."""
    nl = "\r\n" if crlf else "\n"
    srt = nl.join(f"{i}{nl}{_srt_time(s)} --> {_srt_time(s + d)}{nl}{text}{nl}" for i, (s, d, text) in
                  enumerate(cues, 1))
    vtt = "WEBVTT" + nl + nl + nl.join(f"{_vtt_time(s)} --> {_vtt_time(s + d)}{nl}{text}{nl}" for s, d, text in cues)
    (tmp_path / "p.srt").write_bytes(srt.encode())
    (tmp_path / "p.vtt").write_bytes(vtt.encode())
    assert _read(tmp_path / "p.srt") == _expected(cues)
    assert _read(tmp_path / "p.vtt") == _expected(cues)


@_PROP
@given(_CUES, st.sampled_from(["srt", "vtt"]))
def test_subtitle_writers_round_trip_through_the_readers(tmp_path, cues, fmt):
    """What `mmva analyze -f srt/vtt` writes, the subtitle reader reads back cue for cue."""
    utts = [Utterance(text=text, start_time=s / 1000, end_time=(s + d) / 1000) for s, d, text in cues]
    timeline = Timeline(source="x.mp4", duration=None, utterances=utts)
    path = tmp_path / f"out.{fmt}"
    path.write_text(get_writer(fmt).to_string(timeline), encoding="utf-8")
    assert _read(path) == _expected(cues)


@_PROP
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 _CUES.map(lambda cs: "\n".join(f"{_srt_time(s)} --> {_srt_time(s + d)}\n{t}\n"
                                                for s, d, t in cs).encode())),
       st.sampled_from(["srt", "vtt"]), st.integers(0, 299))
def test_any_bytes_give_cues_or_a_subtitle_error_naming_the_file(tmp_path, data, fmt, cut):
    """Random, truncated and mutated files: valid cues or a SubtitleError naming the file, nothing else."""
    path = tmp_path / f"fuzz.{fmt}"
    path.write_bytes(data[:cut] + data[cut + 1:])  # drop one byte: truncation inside a cue, a broken arrow ...
    try:
        utts = read_subtitles(str(path))
    except SubtitleError as exc:
        assert str(path) in str(exc)
    else:
        assert all(u.text and u.text == u.text.strip() for u in utts)
        assert all(0 <= u.start_time < u.end_time for u in utts)
        assert [u.start_time for u in utts] == sorted(u.start_time for u in utts)


# -- several faces in a frame, through `mmva analyze` ---------------------------------------------
def _second_face(size: int = 44) -> np.ndarray:
    """Another person (LFW image 0, shipped with scikit-image), smaller than the astronaut's face
    (a 44 px box against ~58 px) and read as a different expression when alone."""
    from skimage import data, transform

    grey = transform.resize(data.lfw_subset()[0], (size, size))
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def _faces_video(path: Path, *, small: bool, large: bool, audio: np.ndarray) -> Path:
    """The astronaut photo large on the left and/or a second, smaller face on the right (320x200)."""
    from tests.media import face_photo, write_video

    canvas = np.full((200, 320, 3), 120, np.uint8)
    if large:
        canvas[20:180, 10:170] = face_photo(160)
    if small:
        canvas[70:114, 220:264] = _second_face()
    n = int(np.ceil(len(audio) / 16000 * 5))
    return write_video(path, np.repeat(canvas[None], n, axis=0), fps=5, audio=audio)


@pytest.fixture(scope="module")
def face_videos(tmp_path_factory) -> dict[str, Path]:
    from tests.media import speak

    root = tmp_path_factory.mktemp("faces")
    audio = np.concatenate([np.zeros(4000, np.float32), speak("I did not expect to see you here")])
    (root / "cues.srt").write_text(f"1\n00:00:00,200 --> {_srt_time(int(len(audio) / 16))}\n"
                                   "I did not expect to see you here.\n")
    return {name: _faces_video(root / f"{name}.mp4", small=small, large=large, audio=audio)
            for name, small, large in (("both", True, True), ("large", False, True), ("small", True, False),
                                       ("none", False, False))}


def test_several_faces_in_decoded_video_follow_the_largest_face(face_videos):
    """Decoded MP4 -> face-expression encoder: with two people in shot it reads the largest face,
    giving the same features as that face alone; no face at all is masked (None), not a guess."""
    import torch

    from mmva.encoders import create_encoder
    from mmva.io.media import decode_clip

    enc = create_encoder("face-expression", num_frames=4).freeze()
    from mmva.encoders.face import detect_and_classify

    prepared = {name: enc.prepare(decode_clip(path, num_frames=4, max_side=320)) for name, path in face_videos.items()}
    assert prepared["none"] is None
    assert all(prepared[n]["mask"].tolist() == [1, 1, 1, 1] for n in ("both", "large", "small"))
    with torch.no_grad():
        both, alone, other = enc(enc.collate([prepared["both"], prepared["large"], prepared["small"]]))[:, -7:]
    assert (other - alone).abs().max() > 0.3  # the second person alone reads differently ...
    # ... yet in the same shot the main face decides; H.264 noise moves its box by a pixel or two
    torch.testing.assert_close(both, alone, atol=0.02, rtol=0)

    result = detect_and_classify(decode_clip(face_videos["both"], num_frames=2, max_side=320).frames)
    assert result is not None and result.n_frames_with_face == 2
    assert all(10 <= x and x + w <= 170 for x, y, w, h in result.boxes)  # inside the large photo on the left


def test_several_faces_in_a_frame_through_mmva_analyze(face_videos, tmp_path):
    """Two people in shot: `mmva analyze` reads the main (largest) face, the same as when it is alone."""
    from typer.testing import CliRunner

    from mmva.cli import app

    cues = str(face_videos["both"].parent / "cues.srt")
    out = {}
    for name, path in face_videos.items():
        result = CliRunner().invoke(app, ["analyze", str(path), "--subtitles", cues, "-o", str(tmp_path), "-q"])
        assert result.exit_code == 0, result.output
        out[name] = json.loads((tmp_path / f"{name}.mmva.json").read_text())
    for name in ("both", "large", "small"):
        (utt,) = out[name]["utterances"]
        assert "video" in utt["modalities"] and "text" in utt["modalities"]
    both, alone, other = (out[n]["utterances"][0]["per_modality"]["video"]["emotion"]
                          for n in ("both", "large", "small"))
    top = lambda probs: max(probs, key=probs.get)  # noqa: E731
    assert top(both) == top(alone) != top(other)
    # the smaller face neither replaces nor blurs the main one
    np.testing.assert_allclose([both[k] for k in both], [alone[k] for k in both], atol=0.03)
    (no_face,) = out["none"]["utterances"]
    assert "video" not in no_face["modalities"] and "video" not in no_face.get("per_modality", {})
    assert "text" in no_face["modalities"]  # no face: the words (and voice) still speak
