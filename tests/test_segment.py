"""Segmentation: words -> utterances, VAD snapping, subtitle and transcript parsing, voice activity."""

from __future__ import annotations

import numpy as np
import pytest

from mmva.analyze.asr import speech_regions
from mmva.analyze.segment import SegmentOptions, Word, fixed_windows, segment_words, snap_to_speech
from mmva.analyze.subtitles import SubtitleError, read_subtitles, read_transcript, sidecar_subtitles
from mmva.types import Utterance
from tests.media import silence, speak


def words(spec: str) -> list[Word]:
    """'hello@0-0.4 there.@0.4-0.9' -> Words."""
    out = []
    for item in spec.split():
        text, times = item.split("@")
        a, b = times.split("-")
        out.append(Word(float(a), float(b), " " + text))
    return out


def test_sentence_ends_and_pauses_split_utterances():
    ws = words("I@0-0.2 am@0.2-0.4 happy.@0.4-1.2 You@1.3-1.5 are@1.5-1.7 not@1.7-2.4 "
               "Later@3.5-3.9 on@3.9-4.2")
    utts = segment_words(ws)
    assert [u.text for u in utts] == ["I am happy.", "You are not", "Later on"]
    assert [(u.start_time, u.end_time) for u in utts] == [(0.0, 1.2), (1.3, 2.4), (3.5, 4.2)]
    assert all(0 < u.extra["asr_confidence"] <= 1 for u in utts)


def test_short_sentence_joins_the_next_one_when_there_is_no_pause():
    utts = segment_words(words("Hello@0.5-0.8 there.@0.8-1.2 I'm@1.6-1.8 very@1.8-2.0 happy@2.0-2.3 today.@2.3-2.8"))
    assert [u.text for u in utts] == ["Hello there. I'm very happy today."]
    # a long enough pause still separates them
    utts = segment_words(words("Hello@0.5-0.8 there.@0.8-1.2 I'm@2.0-2.2 fine.@2.2-2.8"))
    assert [u.text for u in utts] == ["Hello there.", "I'm fine."]


def test_long_speech_is_cut_below_max_duration_preferring_commas():
    # 40 words of 0.5 s without pauses or sentence ends (20 s), one comma at 9.5 s
    ws = [Word(i * 0.5, i * 0.5 + 0.45, f" w{i}{',' if i == 19 else ''}") for i in range(40)]
    utts = segment_words(ws, SegmentOptions(max_duration=12.0))
    assert len(utts) == 2
    assert utts[0].text.endswith("w19,")
    assert all(u.end_time - u.start_time <= 12.0 for u in utts)
    assert sum(len(u.text.split()) for u in utts) == 40


def test_snap_shrinks_into_speech_and_grows_only_within_tolerance():
    utts = [Utterance(text="a", start_time=0.2, end_time=3.6), Utterance(text="b", start_time=4.3, end_time=5.5)]
    snapped = snap_to_speech(utts, [(0.5, 2.8), (4.0, 5.3), (9.0, 10.0)])
    assert [(u.start_time, u.end_time) for u in snapped] == [(0.5, 2.8), (4.0, 5.3)]
    # a region edge far away (beyond tolerance) does not stretch an utterance
    far = snap_to_speech([Utterance(text="c", start_time=4.0, end_time=5.0)], [(2.0, 7.0)], tolerance=0.5)
    assert (far[0].start_time, far[0].end_time) == (4.0, 5.0)
    # never across the neighbouring utterance
    pair = [Utterance(text="x", start_time=1.0, end_time=2.0), Utterance(text="y", start_time=2.2, end_time=3.0)]
    pair = snap_to_speech(pair, [(0.9, 3.1)])
    assert pair[0].end_time <= pair[1].start_time


def test_fixed_windows_cover_the_duration():
    wins = fixed_windows(12.2, 5.0)
    assert [(u.start_time, u.end_time) for u in wins] == [(0.0, 5.0), (5.0, 10.0), (10.0, 12.2)]
    assert fixed_windows(0.0) == []
    assert [(u.start_time, u.end_time) for u in fixed_windows(10.3, 5.0)] == [(0.0, 5.0), (5.0, 10.3)]


def test_vad_finds_speech_regions_and_none_in_silence():
    rate = 16000
    audio = np.concatenate([silence(0.5), speak("I am very happy today"), silence(1.5), speak("this is bad"),
                            silence(0.5)])
    first_end = 0.5 + len(speak("I am very happy today")) / rate
    regions = speech_regions(audio)
    assert len(regions) == 2
    assert abs(regions[0][0] - 0.5) < 0.3 and regions[0][1] <= first_end + 0.3
    assert regions[1][0] > first_end + 1.0
    assert speech_regions(silence(3.0)) == []
    assert speech_regions(np.random.default_rng(0).normal(0, 1e-4, 32000).astype(np.float32)) == []


def test_srt_and_vtt_parse_to_the_same_utterances(tmp_path):
    srt = tmp_path / "talk.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:02,000\n<i>I love</i> this.\n\n"
                   "2\n00:00:03,000 --> 00:00:04,250\nThis is\nawful.\n\n3\n00:00:05,000 --> 00:00:06,000\n\n")
    vtt = tmp_path / "talk.vtt"
    vtt.write_text("WEBVTT\n\n00:00.500 --> 00:02.000\n<v Ann>I love this.\n\n"
                   "00:03.000 --> 00:04.250\nThis is awful.\n")
    a, b = read_subtitles(str(srt)), read_subtitles(str(vtt))
    assert [(u.start_time, u.end_time, u.text) for u in a] == [(0.5, 2.0, "I love this."), (3.0, 4.25, "This is awful.")]
    assert [(u.start_time, u.end_time, u.text) for u in b] == [(u.start_time, u.end_time, u.text) for u in a]
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"")
    assert sidecar_subtitles(str(video)) == str(srt)
    assert sidecar_subtitles(str(tmp_path / "other.mp4")) is None


def test_bad_subtitle_and_transcript_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.srt"
    junk.write_bytes(b"this is not a subtitle file at all\nreally not\n")
    with pytest.raises(SubtitleError, match="junk.srt"):
        read_subtitles(str(junk))
    with pytest.raises(SubtitleError, match="missing.vtt: subtitle file not found"):
        read_subtitles(str(tmp_path / "missing.vtt"))
    binary = tmp_path / "notes.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(SubtitleError, match="notes.txt: not a text file"):
        read_transcript(str(binary))
    text = tmp_path / "t.txt"
    text.write_text("\ufeffI won the lottery!\n\n   \nMy dog died.\n")
    assert [(u.text, u.extra["line"]) for u in read_transcript(str(text))] == [
        ("I won the lottery!", 1), ("My dog died.", 4)]


def test_transcription_with_known_voice_activity_gives_the_same_words():
    # The pipeline hands the VAD it already ran to the ASR instead of running it twice: the words
    # (text and timestamps) must be exactly those of faster-whisper's own VAD filter.
    from mmva.analyze.asr import load_asr, speech_stamps, stamps_to_seconds, transcribe_words

    audio = np.concatenate([silence(0.7), speak("I am very happy today"), silence(1.2),
                            speak("please open the window")]).astype(np.float32)
    stamps = speech_stamps(audio)
    regions = stamps_to_seconds(stamps)
    assert regions == speech_regions(audio)
    asr = load_asr()
    once = transcribe_words(asr, audio, regions, stamps=stamps)
    twice = transcribe_words(asr, audio, regions)
    assert [w.text for w in once] and once == twice
