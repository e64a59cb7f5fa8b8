"""End-to-end `analyze` on generated talking videos: a real face photo, espeak-ng speech, PyAV muxing,
the offline Whisper model and the default model that ships with mmva."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

import mmva
from mmva.analyze import AnalyzeOptions, analyze
from mmva.analyze.pipeline import FrameCollector
from mmva.cli import app
from tests.media import face_frames, moving_frames, random_bytes_file, silence, speak, write_video, write_wav

RATE = 16000
SENTENCES = ("I am so happy to see you today", "This is terrible news for all of us",
             "Oh no I am scared of the dark")
KEYWORDS = ("happy", "terrible", "dark")


def _speech(sentences=SENTENCES, pause: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentences separated by `pause` s of silence (0.5 s lead-in); returns audio and true spans."""
    parts, spans, t = [silence(0.5)], [], 0.5
    for s in sentences:
        a = speak(s)
        spans.append((t, t + len(a) / RATE))
        parts += [a, silence(pause)]
        t += len(a) / RATE + pause
    return np.concatenate(parts), spans


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("analyze")
    audio, spans = _speech()
    n = int(len(audio) / RATE * 10) + 1
    faces = face_frames(n, 128)
    out = {"root": root, "spans": spans, "duration": len(audio) / RATE}
    out["talk"] = write_video(root / "talk.mp4", faces, fps=10, audio=audio)
    out["noface"] = write_video(root / "noface.mp4", moving_frames(n, 96, 96), fps=10, audio=audio)
    out["mute"] = write_video(root / "mute.mp4", faces[:60], fps=10)
    out["silent"] = write_video(root / "silent.mp4", faces[:30], fps=10, audio=silence(3.0))
    out["wav"] = write_wav(root / "voice.wav", audio)
    return out


@pytest.fixture(scope="module")
def talk_timeline(media):
    stages = []
    timeline = analyze(str(media["talk"]), progress=lambda s, f: stages.append((s, f)))
    return timeline, stages


def _close(spans_a, spans_b, tol):
    return all(abs(a0 - b0) <= tol and abs(a1 - b1) <= tol for (a0, a1), (b0, b1) in zip(spans_a, spans_b))


def test_utterances_and_times_match_the_speech(media, talk_timeline):
    timeline, stages = talk_timeline
    utts = timeline.utterances
    assert len(utts) == 3, [u.text for u in utts]
    assert _close([(u.start_time, u.end_time) for u in utts], media["spans"], 0.5), \
        ([(u.start_time, u.end_time) for u in utts], media["spans"])
    for u, word in zip(utts, KEYWORDS):
        assert word in u.text.lower()
        assert u.modalities == ["text", "audio", "video"]  # words, voice and the face are all used
        assert len(u.emotions) == 3 and len(u.sentiments) == 3
        confs = [e["confidence"] for e in u.emotions]
        assert confs == sorted(confs, reverse=True) and 0 < sum(confs) <= 1.0001
        assert set(u.per_modality) == set(u.modalities)
    assert timeline.segmentation == "asr" and "asr" in timeline.model
    assert timeline.duration == pytest.approx(media["duration"], abs=0.2)
    summary = timeline.summary
    assert summary["dominant_emotion"] in mmva.EMOTIONS
    assert sum(summary["emotion_share"].values()) == pytest.approx(1.0, abs=1e-3)
    # the progress hook saw every stage in order and ended at 1.0
    names = [s for s, _ in stages]
    assert names[0] == "probe" and names[-1] == "done" and stages[-1][1] == 1.0
    assert {"speech", "frames", "emotions"} <= set(names)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)


def test_text_drives_the_prediction(talk_timeline):
    timeline, _ = talk_timeline
    happy, terrible, _ = timeline.utterances
    assert happy.sentiments[0]["label"] == "positive"
    assert terrible.extra["sentiment_probs"]["negative"] > happy.extra["sentiment_probs"]["negative"]


def test_short_windows_stream_the_same_result(media, talk_timeline):
    # windows of 4 s (cut at pauses) instead of one: same utterances, so long files can stream
    windowed = analyze(str(media["talk"]), options=AnalyzeOptions(window=4.0, lookahead=2.0))
    whole = talk_timeline[0]
    assert len(windowed.utterances) == len(whole.utterances) == 3
    assert all(word in u.text.lower() for u, word in zip(windowed.utterances, KEYWORDS))  # ASR words may vary
    assert _close([(u.start_time, u.end_time) for u in windowed.utterances],
                  [(u.start_time, u.end_time) for u in whole.utterances], 0.3)


def test_subtitles_beside_the_video_replace_speech_recognition(media, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(Path(media["talk"]).read_bytes())
    (tmp_path / "clip.srt").write_text("1\n00:00:00,500 --> 00:00:02,400\nWhat a wonderful day!\n\n"
                                       "2\n00:00:03,400 --> 00:00:05,500\nI hate this so much.\n")
    timeline = analyze(str(video))
    assert timeline.segmentation == "subtitles"
    assert [(u.start_time, u.end_time, u.text) for u in timeline.utterances] == [
        (0.5, 2.4, "What a wonderful day!"), (3.4, 5.5, "I hate this so much.")]
    assert "speech" not in timeline.timings and "asr" not in timeline.model  # no ASR ran
    assert all({"text", "video"} <= set(u.modalities) for u in timeline.utterances)
    # the subtitle words reach the text model (the smiling face pulls the fused result towards joy)
    text_sentiment = [max(u.per_modality["text"]["sentiment"].items(), key=lambda kv: kv[1])[0]
                      for u in timeline.utterances]
    assert text_sentiment == ["positive", "negative"]
    probs = [u.extra["sentiment_probs"]["negative"] for u in timeline.utterances]
    assert probs[1] > probs[0]
    # an explicit --subtitles file wins over the one beside the video
    other = tmp_path / "other.vtt"
    other.write_text("WEBVTT\n\n00:06.500 --> 00:08.500\nOh no I am scared.\n")
    chosen = analyze(str(video), subtitles=str(other))
    assert [(u.start_time, u.text) for u in chosen.utterances] == [(6.5, "Oh no I am scared.")]


def test_embedded_subtitle_stream(media, tmp_path):
    srt = tmp_path / "cues.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:02,400\nEmbedded one.\n\n2\n00:00:03,400 --> 00:00:05,500\nEmbedded two.\n")
    mkv = tmp_path / "movie.mkv"
    with av.open(str(media["talk"])) as src, av.open(str(srt)) as subs, av.open(str(mkv), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in (src.streams.video[0], src.streams.audio[0])}
        sub_out = out.add_stream_from_template(subs.streams.subtitles[0])
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        for packet in subs.demux():
            if packet.dts is not None:
                packet.stream = sub_out
                out.mux(packet)
    timeline = analyze(str(mkv))
    assert timeline.segmentation == "embedded-subtitles"
    assert [u.text for u in timeline.utterances] == ["Embedded one.", "Embedded two."]
    assert abs(timeline.utterances[1].start_time - 3.4) < 0.2


def test_audio_only_input(media):
    timeline = analyze(str(media["wav"]))
    assert len(timeline.utterances) == 3
    assert _close([(u.start_time, u.end_time) for u in timeline.utterances], media["spans"], 0.5)
    assert all(u.modalities == ["text", "audio"] for u in timeline.utterances)
    assert timeline.media["has_video"] is False


def test_video_without_audio_is_analysed_from_the_face(media):
    timeline = analyze(str(media["mute"]))
    assert timeline.segmentation == "windows"
    assert any("no audio" in p for p in timeline.problems)
    assert [(u.start_time, u.end_time) for u in timeline.utterances] == [(0.0, 5.0), (5.0, 6.0)]
    assert all(u.modalities == ["video"] and u.text == "" for u in timeline.utterances)


def test_video_without_a_face_uses_words_and_voice_only(media):
    timeline = analyze(str(media["noface"]))
    assert len(timeline.utterances) == 3
    assert all(u.modalities == ["text", "audio"] for u in timeline.utterances)


def test_silence_gives_no_utterances(media, tmp_path):
    timeline = analyze(str(media["silent"]))
    assert timeline.utterances == [] and timeline.segmentation == "asr"
    assert timeline.summary["dominant_emotion"] is None
    data = json.loads(json.dumps(timeline.to_dict()))
    assert data["utterances"] == [] and data["summary"]["n_utterances"] == 0


def test_s3_source_in_s3_outputs_out(media, s3_bucket):
    from mmva.io import storage

    storage.upload_file_atomic(media["wav"], f"{s3_bucket}/in/voice.wav")
    result = CliRunner().invoke(app, ["analyze", f"{s3_bucket}/in/voice.wav", "-o", f"{s3_bucket}/out", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(storage.read_text(f"{s3_bucket}/out/voice.mmva.json"))
    assert data["source"] == f"{s3_bucket}/in/voice.wav" and len(data["utterances"]) == 3


def test_transcript_and_subtitle_file_inputs(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("I am thrilled, this is the best day ever!\nThat was a disgusting thing to do.\n")
    timeline = mmva.analyze(str(txt))  # the package forwards calls to analyze()
    assert timeline.segmentation == "transcript"
    assert [u.start_time for u in timeline.utterances] == [None, None]
    assert all(u.modalities == ["text"] for u in timeline.utterances)
    assert timeline.utterances[0].sentiments[0]["label"] == "positive"
    vtt = tmp_path / "cues.vtt"
    vtt.write_text("WEBVTT\n\n00:01.000 --> 00:02.000\nI love you.\n")
    t2 = analyze(str(vtt))
    assert (t2.segmentation, t2.utterances[0].start_time, t2.utterances[0].modalities) == ("subtitles", 1.0, ["text"])


def test_frame_collector_keeps_k_frames_nearest_to_targets():
    c = FrameCollector([(0.0, 4.0), (10.0, 10.2)], fps=2.0, k_max=3)
    for i in range(0, 25):  # a frame every 0.5 s
        c.add(i * 0.5, np.full((1, 1, 3), i, np.uint8))
    assert c.frames(0)[:, 0, 0, 0].tolist() == [1, 4, 7]  # nearest to 0.67, 2.0, 3.33 s
    assert c.frames(1)[:, 0, 0, 0].tolist() == [20]
    empty = FrameCollector([(100.0, 101.0)], fps=2.0, k_max=3)
    empty.add(0.0, np.zeros((1, 1, 3), np.uint8))
    assert empty.frames(0) is None


def test_cli_batch_reports_the_corrupt_file_and_does_the_rest(media, tmp_path):
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    (folder / "talk.mp4").write_bytes(Path(media["talk"]).read_bytes())
    (folder / "sub" / "voice.wav").write_bytes(Path(media["wav"]).read_bytes())
    random_bytes_file(folder / "broken.mp4")
    (folder / "readme.md").write_text("not media")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(folder), "--out", str(out), "--format", "json,srt", "-q"])
    assert result.exit_code == 1, result.output
    assert "broken.mp4" in result.output and "not a readable media file" in result.output
    assert "analysed 2 file(s), 1 failed" in result.output
    data = json.loads((out / "talk.mmva.json").read_text())
    assert len(data["utterances"]) == 3
    assert (out / "sub" / "voice.mmva.json").exists() and (out / "talk.mmva.srt").exists()
    assert not list(out.rglob("broken*"))


def test_cli_single_file_errors_are_clear(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", str(tmp_path / "missing.mp4")])
    assert result.exit_code == 1 and "missing.mp4: file not found" in result.output
    assert runner.invoke(app, ["analyze"]).exit_code == 2
    wav = tmp_path / "a.wav"
    write_wav(wav, speak("hello there"))
    result = runner.invoke(app, ["analyze", str(wav), "--asr-model", str(tmp_path / "no-such-model")])
    assert result.exit_code == 1 and "no-such-model does not exist" in result.output
    assert runner.invoke(app, ["analyze", "x.mp4", "--format", "pdf"]).exit_code == 2


def test_readme_sample_command_runs_offline(tmp_path):
    # the README's main command, as a user runs it: a real process, no network
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", "from mmva.cli import app; app()", "analyze", "--sample", "--out", str(tmp_path),
                           "--format", "all"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "mmva-sample.mmva.json").read_text())
    assert len(data["utterances"]) >= 3
    assert all("text" in u["modalities"] for u in data["utterances"])
    # the sample cuts away from the face for the sad lines: the face is used only where it is seen
    with_face = ["video" in u["modalities"] for u in data["utterances"]]
    assert with_face[0] and not all(with_face)
    for ext in ("csv", "srt", "vtt", "html"):
        assert (tmp_path / f"mmva-sample.mmva.{ext}").stat().st_size > 0
    assert "joy" in proc.stdout or "anger" in proc.stdout or "sadness" in proc.stdout


def test_cli_batch_outputs_never_overwrite_each_other(media, tmp_path):
    # talk.mp4 and talk.wav side by side: each keeps its extension, both are written, nothing lost
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "talk.mp4").write_bytes(Path(media["talk"]).read_bytes())
    (folder / "talk.wav").write_bytes(Path(media["wav"]).read_bytes())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(folder), "-o", str(out), "-q"])
    assert result.exit_code == 0 and "analysed 2 file(s), 0 failed" in result.output, result.output
    video = json.loads((out / "talk.mp4.mmva.json").read_text())
    audio = json.loads((out / "talk.wav.mmva.json").read_text())
    assert video["source"].endswith("talk.mp4") and video["media"]["has_video"]
    assert audio["source"].endswith("talk.wav") and not audio["media"]["has_video"]
    # the same name in two folders, given as files: one sub-folder each
    for name, line in (("a", "What a lovely surprise!"), ("b", "This is disgusting.")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text(line + "\n")
    result = CliRunner().invoke(app, ["analyze", str(tmp_path / "a" / "notes.txt"), str(tmp_path / "b" / "notes.txt"),
                                      "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "a" / "notes.mmva.json").read_text())["utterances"][0]["text"] == "What a lovely surprise!"
    assert json.loads((out / "b" / "notes.mmva.json").read_text())["utterances"][0]["text"] == "This is disgusting."


def test_cli_unwritable_out_fails_before_the_work(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file, not a folder.\n")
    for inputs in ([str(blocker)], [str(blocker), str(blocker.with_name("missing.mp4"))]):
        result = CliRunner().invoke(app, ["analyze", *inputs, "-o", str(blocker / "out")])
        assert result.exit_code == 2, result.output
        assert "file.txt/out: cannot write outputs here: Not a directory" in " ".join(result.output.split())
        assert "missing.mp4" not in result.output  # refused before anything was analysed
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_a_write_failure_fails_that_file_and_the_batch_goes_on(tmp_path):
    folder = tmp_path / "subs"
    folder.mkdir()
    for name, line in (("one", "I am so happy today."), ("two", "That is terrible news.")):
        (folder / f"{name}.srt").write_text(f"1\n00:00:01,000 --> 00:00:03,000\n{line}\n")
    out = tmp_path / "out"
    (out / "one.mmva.json").mkdir(parents=True)  # a folder where one output file must go: the write fails
    result = CliRunner().invoke(app, ["analyze", str(folder), "-o", str(out), "-q"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"failed: {folder / 'one.srt'}: cannot write outputs:" in text and "one.mmva.json" in text
    assert "analysed 1 file(s), 1 failed" in text
    assert json.loads((out / "two.mmva.json").read_text())["utterances"][0]["text"] == "That is terrible news."
    # a single file: the same failure is a clear error, not a traceback
    result = CliRunner().invoke(app, ["analyze", str(folder / "one.srt"), "-o", str(out)])
    assert result.exit_code == 1 and "cannot write the outputs of" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_plain_text_transcripts_keep_angle_brackets(tmp_path):
    txt = tmp_path / "maths.txt"
    txt.write_text("x < 5 and y > 2 makes me happy\n  <b>not a tag</b>   here \n")
    timeline = analyze(str(txt))
    assert [u.text for u in timeline.utterances] == ["x < 5 and y > 2 makes me happy", "<b>not a tag</b> here"]


def test_truncated_fast_start_mp4_names_the_part_not_analysed(media, tmp_path):
    from tests.media import faststart, truncate

    whole = faststart(media["talk"], tmp_path / "whole.mp4")
    cut = truncate(whole, tmp_path / "cut.mp4", 0.5)
    timeline = analyze(str(cut))
    assert timeline.duration == pytest.approx(media["duration"], abs=0.2)  # the index still says the whole length
    problem = next(p for p in timeline.problems if p.startswith("audio ends at"))
    end = float(problem.split()[3])
    assert 1.0 < end < media["duration"] - 1.0
    assert f"{end:.1f}-{timeline.duration:.1f} s not analysed" in problem
    assert all(u.end_time <= end + 0.1 for u in timeline.utterances)
    assert not any(p.startswith("audio ends") for p in analyze(str(whole)).problems)


def test_bad_subtitle_cues_are_named_not_dropped_silently(media, tmp_path):
    srt = tmp_path / "cues.srt"
    duration = media["duration"]
    srt.write_text("1\n00:00:00,600 --> 00:00:02,000\nI am so happy to see you today\n\n"
                   "2\n-00:00:01,000 --> 00:00:02,000\nbefore the start\n\n"
                   "3\n00:00:05,000 --> 00:00:04,000\nbackwards\n\n"
                   f"4\n00:00:0{int(duration) - 1},000 --> 00:01:40,000\nruns past the end\n\n"
                   "5\n00:01:50,000 --> 00:01:55,000\nafter the end\n")
    timeline = analyze(str(media["talk"]), subtitles=str(srt))
    assert [u.text for u in timeline.utterances] == ["I am so happy to see you today", "runs past the end"]
    assert timeline.utterances[-1].end_time == pytest.approx(duration, abs=0.05)
    text = "\n".join(timeline.problems)
    assert "subtitle cue -00:00:01,000 --> 00:00:02,000 ('before the start') has a negative time; skipped" in text
    assert "subtitle cue 00:00:05.000-00:00:04.000 ('backwards') ends before it starts; skipped" in text
    assert "subtitle cue 00:01:50.000-00:01:55.000 ('after the end') starts after the media ends" in text
    assert "('runs past the end') runs past the media's end; cut at" in text
    # the same cues alone (no media): the bad ones are named too, and on screen
    result = CliRunner().invoke(app, ["analyze", str(srt), "-o", str(tmp_path / "out")])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "note:" in flat and "has a negative time; skipped" in flat
    assert "('backwards') ends before it starts; skipped" in flat
