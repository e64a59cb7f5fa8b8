"""The face that speaks: with two real faces on screen, the one whose mouth moves is read, and the
analyze JSON says which face box that was. The clips go through H.264 and back, as in ``mmva analyze``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmva.analyze.timeline import Timeline, apply_prediction
from mmva.encoders.face import detect_and_classify
from mmva.io.media import iter_frames
from mmva.types import Utterance
from tests.media import mouth_frames, write_video

H, W = 240, 400
LEFT, RIGHT = (slice(30, 210), slice(10, 190)), (slice(50, 194), slice(236, 380))  # 180 px, 144 px faces


def _face(size: int, n: int, talks: bool) -> np.ndarray:
    """The astronaut photo ``n`` times; when ``talks``, its mouth opens and closes."""
    return mouth_frames(size, n, talks)


def two_faces(tmp_path: Path, talker: str | None, n: int = 8) -> np.ndarray:
    """Two faces side by side (the left one larger) as an MP4, decoded back at 2 frames a second."""
    frames = np.full((n, H, W, 3), 110, np.uint8)
    frames[(slice(None), *LEFT)] = _face(180, n, talker == "left")
    frames[(slice(None), *RIGHT)] = _face(144, n, talker == "right")[:, :, ::-1]  # mirrored: another pose
    path = write_video(tmp_path / f"two_{talker}.mp4", frames, fps=4.0)
    return np.stack([f for _, f in iter_frames(path, fps=2.0, max_side=320)])


def _side(box: tuple[int, int, int, int], width: int) -> str:
    return "left" if box[0] + box[2] / 2 < width / 2 else "right"


@pytest.mark.parametrize("talker", ["left", "right"])
def test_the_face_whose_mouth_moves_is_read(tmp_path: Path, talker: str) -> None:
    frames = two_faces(tmp_path, talker)
    result = detect_and_classify(frames, speaking=True)
    assert result is not None and result.n_frames_with_face == len(frames) >= 3
    assert {_side(b, frames.shape[2]) for b in result.boxes} == {talker}
    assert _side(result.read_box(), frames.shape[2]) == talker
    # by default (and for the training encoder) the largest face is still the one read
    main = detect_and_classify(frames)
    assert {_side(b, frames.shape[2]) for b in main.boxes} == {"left"}


def test_two_still_faces_keep_the_largest(tmp_path: Path) -> None:
    frames = two_faces(tmp_path, None)
    result = detect_and_classify(frames, speaking=True)
    assert {_side(b, frames.shape[2]) for b in result.boxes} == {"left"}


def test_the_json_says_which_face_was_read(tmp_path: Path) -> None:
    from mmva.model.default import load_default_model

    clips = [two_faces(tmp_path, "right"), two_faces(tmp_path, "left")]
    preds = load_default_model().predict(["", ""], frames=clips)
    utts = [apply_prediction(Utterance(text="", start_time=2.0 * i, end_time=2.0 * i + 2), p)
            for i, p in enumerate(preds)]
    data = json.loads(json.dumps(Timeline(source="two.mp4", utterances=utts).to_dict()))
    right, left = (u["face_box"] for u in data["utterances"])
    assert set(right) == {"x", "y", "w", "h"} and all(0 <= v <= 1 for v in right.values())
    assert right["x"] + right["w"] / 2 > 0.5 > left["x"] + left["w"] / 2  # fractions of the frame
    assert right["w"] < left["w"]  # the smaller face on the right was read when it spoke
    assert abs(right["y"] + right["h"] / 2 - 122 / H) < 0.08  # centred on the right face's own height
    assert [u["face_chosen"] for u in data["utterances"]] == ["mouth", "mouth"]


def test_a_speaker_whose_lips_were_seen_moving_keeps_that_face(tmp_path: Path) -> None:
    """Speaker 1 (the smaller face) talks with a moving mouth, then again when neither mouth moves
    between the frames: the face where Speaker 1 was seen talking is read, not the larger one.
    Speaker 2's still utterance, with no face of its own yet, keeps the largest."""
    from mmva.model.default import load_default_model

    talking, still = two_faces(tmp_path, "right"), two_faces(tmp_path, None)
    preds = load_default_model().predict(["", "", ""], frames=[talking, still, still],
                                         speakers=["Speaker 1", "Speaker 1", "Speaker 2"])
    assert [p["face_chosen"] for p in preds] == ["mouth", "speaker", "largest"]
    sides = ["right" if p["face_box"]["x"] + p["face_box"]["w"] / 2 > 0.5 else "left" for p in preds]
    assert sides == ["right", "right", "left"]
    # without speakers nothing is carried over: the still clip reads the largest face
    assert load_default_model().predict([""], frames=[still])[0]["face_chosen"] == "largest"


def test_a_speakers_face_is_remembered_from_one_call_to_the_next(tmp_path: Path) -> None:
    """``mmva analyze`` predicts window by window: the memory the model hands out (one per recording)
    carries where Speaker 1 was seen talking into the next call; without it nothing is carried."""
    from mmva.model.default import load_default_model

    model = load_default_model()
    talking, still = two_faces(tmp_path, "right"), two_faces(tmp_path, None)
    memory = model.speaker_faces()
    first = model.predict([""], frames=[talking], speakers=["Speaker 1"], speaker_faces=memory)[0]
    later = model.predict(["", ""], frames=[still, still], speakers=["Speaker 1", "Speaker 2"],
                          speaker_faces=memory)
    assert first["face_chosen"] == "mouth" and [p["face_chosen"] for p in later] == ["speaker", "largest"]
    assert later[0]["face_box"]["x"] > 0.5 > later[1]["face_box"]["x"]  # Speaker 1 on the right face
    assert memory.where("Speaker 2") is None
    alone = model.predict([""], frames=[still], speakers=["Speaker 1"])[0]
    assert alone["face_chosen"] == "largest"
