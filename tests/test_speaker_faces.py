"""Each speaker's face over the whole video (issue 21): two real faces on screen whose owners speak in
turn with two distinct espeak-ng voices, the talking one's mouth moving; the video goes through
``mmva analyze`` (speech recognition, diarization, the face reader) as a user's would."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmva.analyze.pipeline import AnalyzeOptions
from mmva.encoders.speaker import speaker_encoder_available
from tests.media import two_faces_talking

pytestmark = pytest.mark.skipif(not speaker_encoder_available(),
                                reason="resemblyzer weights not installed (pip install --no-deps resemblyzer)")

LINES = ["I think we should start the meeting now, everyone is here.",
         "Sure, but I have not finished the slides for the budget yet.",
         "Did anyone book the room for tomorrow morning?",
         "Yes, I booked it last week, it is on the third floor."]
# Voice 0 speaks on the smaller face (right), so reading the largest face would be wrong for it.
SIDES = ["right", "left"]


def _side(box: dict[str, float]) -> str:
    return "right" if box["x"] + box["w"] / 2 > 0.5 else "left"


def _turn_of(u: dict, ref: list[tuple[float, float, int]]) -> int:
    """The reference turn an utterance overlaps most."""
    overlap = [min(e, u["end_time"]) - max(s, u["start_time"]) for s, e, _ in ref]
    return max(range(len(ref)), key=overlap.__getitem__)


def test_analyze_names_each_turns_speaker_and_reads_the_talking_face(tmp_path: Path) -> None:
    """End to end with the CLI: each utterance gets its voice's speaker label, and the face read is
    the face whose mouth moves during that turn (the smaller one for voice 0)."""
    from mmva.cli import app

    turns = [(0, LINES[0]), (1, LINES[1]), (0, LINES[2]), (1, LINES[3])]
    video, ref = two_faces_talking(tmp_path / "interview.mp4", turns, SIDES)
    result = CliRunner().invoke(app, ["analyze", str(video), "-o", str(tmp_path), "-f", "json,csv", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "interview.mmva.json").read_text())
    utts = data["utterances"]
    assert len(utts) >= len(turns)
    name = {}  # voice -> speaker label, from the first turn of each voice
    for u in utts:
        voice = ref[_turn_of(u, ref)][2]
        name.setdefault(voice, u["speaker"])
        assert u["speaker"] == name[voice], (u, ref)
        assert _side(u["face_box"]) == SIDES[voice], (u, ref)
        assert u["face_chosen"] == "mouth"
    assert sorted(name.values()) == ["Speaker 1", "Speaker 2"]
    assert {_turn_of(u, ref) for u in utts} == set(range(len(turns)))  # every turn was heard
    rows = list(csv.DictReader(open(tmp_path / "interview.mmva.csv", newline="")))
    assert [r["speaker"] for r in rows] == [u["speaker"] for u in utts]


def test_a_speakers_face_is_kept_across_analysis_windows(tmp_path: Path) -> None:
    """The pipeline predicts window by window (``AnalyzeOptions.window``). Both voices are seen
    talking in the first window; in the second, no mouth moves, so only where each speaker was seen
    talking earlier tells which face is theirs: voice 0 keeps the smaller face, not the largest."""
    import mmva

    turns = [(0, LINES[0]), (1, LINES[1]), (0, LINES[2]), (1, LINES[3])]
    video, ref = two_faces_talking(tmp_path / "panel.mp4", turns, SIDES, moving=[True, True, False, False],
                                   pauses=[0.6, 2.4, 0.6])
    cut = (ref[1][1] + ref[2][0]) / 2  # the middle of the long pause: the first window ends there
    stages: list[str] = []
    timeline = mmva.analyze(str(video), options=AnalyzeOptions(window=cut, lookahead=1.0),
                            progress=lambda stage, _: stages.append(stage))
    assert stages.count("emotions") == 2  # one prediction per window: two windows
    utts = json.loads(json.dumps(timeline.to_dict()))["utterances"]
    name = {}
    for u in utts:
        turn = _turn_of(u, ref)
        voice = ref[turn][2]
        name.setdefault(voice, u["speaker"])
        assert u["speaker"] == name[voice], (u, ref)  # the same name in both windows
        assert _side(u["face_box"]) == SIDES[voice], (u, ref)
        assert u["face_chosen"] == ("mouth" if turn < 2 else "speaker"), (u, ref)
    assert len(set(name.values())) == 2
