"""Speaker diarization (issue 21): real espeak-ng voices, the real GE2E encoder, real clustering."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmva.analyze.diarize import Diarizer, DiarizeOptions, SpeakerTrack, cluster, window_spans
from mmva.data.synth import conversation, speak
from mmva.encoders.speaker import speaker_encoder_available
from tests.media import write_wav

needs_encoder = pytest.mark.skipif(not speaker_encoder_available(),
                                   reason="resemblyzer weights not installed (pip install --no-deps resemblyzer)")

LINES = ["I think we should start the meeting now, everyone is here.",
         "Sure, but I have not finished the slides for the budget yet.",
         "Did anyone book the room for tomorrow morning?",
         "Yes, I booked it last week, it is on the third floor."]


def der(reference: list[tuple[float, float, object]], hypothesis: list[tuple[float, float, object]]) -> float:
    """Diarization error rate with pyannote.metrics (no forgiveness collar, overlap scored)."""
    metrics = pytest.importorskip("pyannote.metrics.diarization")
    from pyannote.core import Annotation, Segment

    ref, hyp = Annotation(), Annotation()
    for s, e, k in reference:
        ref[Segment(s, e)] = str(k)
    for s, e, k in hypothesis:
        hyp[Segment(s, e)] = str(k)
    return float(metrics.DiarizationErrorRate()(ref, hyp))


def test_options_reject_bad_counts():
    with pytest.raises(ValueError, match="speakers must be a whole number"):
        DiarizeOptions(speakers=0)
    with pytest.raises(ValueError, match="more than max_speakers"):
        DiarizeOptions(min_speakers=3, max_speakers=2)
    with pytest.raises(ValueError, match="not both"):
        DiarizeOptions(speakers=2, max_speakers=3)


def test_windows_cover_regions():
    spans = window_spans([(0.0, 3.0), (4.0, 4.2), (5.0, 6.0)])
    assert spans[0] == (0.0, 1.6) and spans[-2][1] == 3.0  # the last window of a region ends at its end
    assert (4.0, 4.2) not in spans and spans[-1] == (5.0, 6.0)  # too short for a window; short = one window


def test_short_turns_do_not_split_an_utterance():
    track = SpeakerTrack([(0.0, 1.6), (1.2, 2.8), (2.4, 4.0)], ["Speaker 1", "Speaker 2", "Speaker 1"])
    words = [(0.1, 0.6), (0.7, 1.2), (1.9, 2.2), (3.0, 3.5)]
    assert set(track.word_labels(words, min_turn=1.0)) == {"Speaker 1"}


@pytest.fixture(scope="module")
def three_voices():
    turns = [(0, LINES[0]), (1, LINES[1]), (2, LINES[2]), (1, LINES[3]), (0, LINES[1]), (2, LINES[0])]
    return conversation(turns, pauses=(0.3, 0.6), seed=3)


@needs_encoder
def test_three_voices_found_and_der_low(three_voices):
    audio, ref = three_voices
    regions = [(s, e) for s, e, _ in ref]
    track = Diarizer().track(audio, regions)
    hyp = [(s, e, track.label(s, e)) for s, e in regions]
    assert len({k for _, _, k in hyp}) == 3  # the count is found, not given
    assert der(ref, hyp) < 0.05


@needs_encoder
def test_given_count_and_bounds(three_voices):
    audio, ref = three_voices
    regions = [(s, e) for s, e, _ in ref]
    two = Diarizer(DiarizeOptions(speakers=2)).track(audio, regions)
    assert len(set(two.labels)) == 2
    at_most = Diarizer(DiarizeOptions(max_speakers=2)).track(audio, regions)
    assert len(set(at_most.labels)) == 2
    at_least = Diarizer(DiarizeOptions(min_speakers=4)).track(audio, regions)
    assert len(set(at_least.labels)) == 4


@needs_encoder
def test_one_voice_is_one_speaker():
    a, b = speak(LINES[0]), speak(LINES[2])
    audio = np.concatenate([a, np.zeros(8000, np.float32), b])
    track = Diarizer().track(audio, [(0.0, len(a) / 16000), ((len(a) + 8000) / 16000, len(audio) / 16000)])
    assert set(track.labels) == {"Speaker 1"}


@needs_encoder
def test_speakers_stay_the_same_across_windows(three_voices):
    """The pipeline diarizes window by window: a voice keeps its name in later windows."""
    audio, ref = three_voices
    d = Diarizer()
    cut = ref[2][0] - 0.1  # window 1: speakers 0 and 1; window 2: speakers 2, 1, 0, 2
    first = d.track(audio[: int(cut * 16000)], [(s, e) for s, e, _ in ref[:2]])
    second = d.track(audio[int(cut * 16000):], [(s - cut, e - cut) for s, e, _ in ref[2:]])
    name = {0: first.label(*ref[0][:2]), 1: first.label(*ref[1][:2])}
    assert name[0] != name[1]
    assert second.label(ref[3][0] - cut, ref[3][1] - cut) == name[1]
    assert second.label(ref[4][0] - cut, ref[4][1] - cut) == name[0]
    assert second.label(ref[2][0] - cut, ref[2][1] - cut) not in name.values()


@needs_encoder
def test_cluster_orders_speakers_by_first_appearance(three_voices):
    from mmva.encoders.speaker import load_speaker_encoder

    audio, ref = three_voices
    spans = window_spans([(s, e) for s, e, _ in ref])
    labels = cluster(load_speaker_encoder().embed_windows(audio, spans), DiarizeOptions())
    assert labels[0] == 0 and list(dict.fromkeys(labels.tolist())) == sorted(set(labels.tolist()))


def test_voice_head_normalises_each_speaker_alone():
    """DefaultModel.predict(speakers=...) = the voice head run once per speaker's utterances."""
    from mmva.model.default import load_default_model

    model = load_default_model()
    if model.voice_head() is None:
        pytest.skip("no voice head in this default model")
    clips = [speak(LINES[i], **v) for i, v in enumerate([{"pitch": 30}, {"pitch": 30}, {"pitch": 80}, {"pitch": 80}])]
    who = ["Speaker 1", "Speaker 1", "Speaker 2", "Speaker 2"]
    grouped = model.audio_probs(clips, 16000, same_speaker=True, speakers=who)
    alone = (model.audio_probs(clips[:2], 16000, same_speaker=True)
             + model.audio_probs(clips[2:], 16000, same_speaker=True))
    for g, a in zip(grouped, alone):
        np.testing.assert_allclose(g["emotion"], a["emotion"], rtol=1e-6)
    preds = model.predict(["", "", "", ""], audio=clips, sample_rate=16000, same_speaker=True, speakers=who)
    for p, a in zip(preds, alone):
        np.testing.assert_allclose(p["per_modality"]["audio"]["emotion"], a["emotion"], atol=1e-6)
    with pytest.raises(ValueError, match="speakers has 1 items"):
        model.predict(["a", "b"], speakers=["Speaker 1"])


def test_checkpoint_predictor_accepts_speakers():
    import inspect

    from mmva.model.predictor import CheckpointPredictor

    assert "speakers" in inspect.signature(CheckpointPredictor.predict).parameters


@pytest.fixture(scope="module")
def analysed_conversation(tmp_path_factory):
    """Two voices; the second turn follows the first after 0.3 s, so speech recognition alone would
    keep them in one utterance: diarization must split it."""
    import mmva

    folder = tmp_path_factory.mktemp("conv")
    audio, ref = conversation([(0, LINES[0]), (1, LINES[1]), (0, LINES[2]), (1, LINES[3])], pauses=(0.3, 0.35),
                              seed=0)
    path = write_wav(folder / "talk.wav", audio)
    return mmva.analyze(str(path)), ref, folder


@needs_encoder
def test_analyze_names_speakers_in_every_output(analysed_conversation):
    from mmva.analyze import get_writer

    timeline, ref, folder = analysed_conversation
    utts = timeline.utterances
    assert {u.speaker for u in utts} == {"Speaker 1", "Speaker 2"}
    hyp = [(u.start_time, u.end_time, u.speaker) for u in utts]
    assert der(ref, hyp) < 0.15
    for s, e, k in ref:  # the middle of every reference turn is one speaker's (boundaries move by up to ~0.7 s)
        inside = {u.speaker for u in utts if u.start_time < e - 0.8 and u.end_time > s + 0.8}
        assert len(inside) == 1, (s, e, k, hyp)
    assert len(utts) >= len(ref)  # turns 0.3 s apart are not left in one utterance
    data = json.loads(get_writer("json").to_string(timeline))
    assert all(u["speaker"].startswith("Speaker ") for u in data["utterances"])
    summary = data["summary"]
    assert summary["n_speakers"] == 2
    s1 = summary["speakers"]["Speaker 1"]
    assert s1["talk_time"] > 3 and s1["dominant_emotion"] and abs(sum(s1["emotion_share"].values()) - 1) < 1e-3
    rows = list(csv.DictReader(io.StringIO(get_writer("csv").to_string(timeline), newline="")))
    assert [r["speaker"] for r in rows] == [u.speaker for u in utts]
    assert get_writer("srt").to_string(timeline).count("Speaker 2: [") == sum(u.speaker == "Speaker 2" for u in utts)
    assert "Speaker 1: [" in get_writer("vtt").to_string(timeline)
    html = get_writer("html").to_string(timeline)
    assert 'aria-label="speaker timeline"' in html and html.count('class="turn"') == len(utts)


@needs_encoder
def test_analyze_given_speakers_and_off(analysed_conversation):
    import mmva

    _, _, folder = analysed_conversation
    one = mmva.analyze(str(folder / "talk.wav"), speakers=1)
    assert {u.speaker for u in one.utterances} == {"Speaker 1"}
    off = mmva.analyze(str(folder / "talk.wav"), diarize=False)
    assert all(u.speaker is None for u in off.utterances) and "speakers" not in off.summary


def test_cli_rejects_bad_speaker_counts(tmp_path):
    from mmva.cli import app

    wav = write_wav(tmp_path / "a.wav", np.zeros(1600, np.float32))
    runner = CliRunner()
    for args, message in ((["--min-speakers", "3", "--max-speakers", "2"], "more than max_speakers"),
                          (["--no-diarize", "--speakers", "2"], "need diarization"),
                          (["--speakers", "2", "--max-speakers", "3"], "not both")):
        result = runner.invoke(app, ["analyze", str(wav), "-o", str(tmp_path), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
    result = runner.invoke(app, ["analyze", str(wav), "-o", str(tmp_path), "--speakers", "0"])
    assert result.exit_code == 2
