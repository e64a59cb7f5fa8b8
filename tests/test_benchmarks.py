"""The benchmark helpers users rely on: the 10 min input is the 60 s one repeated (real MP4 remux),
the README tables come from the results files (and go stale when a figure changes), and every
result records the machine it ran on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402


def test_repeat_video_plays_the_clip_n_times(tmp_path):
    from bench_scaling import repeat_video

    from mmva.data.synth import write_mp4
    from mmva.io.media import iter_frames, probe, read_audio

    frames = np.zeros((20, 48, 64, 3), np.uint8)
    frames[:, :, :32] = 200  # left half bright: a repeated copy must show the same picture
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    src = write_mp4(tmp_path / "two.mp4", frames, fps=10, audio=tone)
    out = repeat_video(src, tmp_path / "six.mp4", 3)
    info = probe(str(out))
    assert info.has_video and info.has_audio and info.duration == pytest.approx(6.0, abs=0.15)
    audio = read_audio(str(out))
    assert audio.size == pytest.approx(3 * 32000, rel=0.03)
    assert np.abs(audio[16000 * 5:16000 * 5 + 1600]).max() > 0.1  # sound in the third copy too
    last = [f for _, f in iter_frames(str(out), fps=1, start=5.0)][-1]
    assert last[:, :20].mean() > 150 > last[:, -20:].mean() + 100


def _results(tmp_path: Path, rtf: float) -> Path:
    res = tmp_path / "results"
    res.mkdir(exist_ok=True)
    machine = {"cpu_model": "Test CPU", "cores": 2, "device": "cpu", "load_average_at_start": [0.5, 0.4, 0.3],
               "date_utc": "2026-01-01T00:00:00Z"}
    row = {"seconds": 60, "runs": 3, "utterances": 26, "analyze_s": round(60 / rtf, 3),
           "seconds_per_minute_of_video": round(60 / rtf, 3), "realtime_factor": rtf, "peak_rss_mb": 1100.0,
           "decode_floor_s": 0.5, "times_decode_floor": 16.0, "reference_s": 300.0, "speedup_vs_reference": 8.5,
           "stages_s": {"decode": 0.3, "speech_recognition": 5.0, "faces": 2.0, "text": 0.2, "audio": 0.0,
                        "fusion": 0.0},
           "load_default_model_s": 8.0, "load_asr_s": 2.0, "modality_usage": {"text": 26, "audio": 0, "video": 26}}
    (res / "scaling.json").write_text(json.dumps({
        "machine": machine, "command": "python benchmarks/bench_scaling.py",
        "reference": {"per_utterance_s_median": 11.0, "measured_utterances": 3}, "lengths": [row]}))
    return res


def test_report_tables_come_from_the_results_and_go_stale(tmp_path, capsys, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Bench\n\nprose kept\n\n{report.BEGIN}\nold\n{report.END}\ntail kept\n")
    res = _results(tmp_path, 5.26)
    argv = ["report.py", "--results", str(res), "--readme", str(readme)]
    monkeypatch.setattr(sys, "argv", argv)
    report.main()
    text = readme.read_text()
    assert "prose kept" in text and "tail kept" in text and "\nold\n" not in text
    assert "| 60 s | 3 | 26 | 11.41 |" in text  # 60 / 5.26 s, straight from the JSON
    assert "5.26× | met" in text and "8.5× | **missed**" in text  # 4x real time met, 10x reference missed
    assert "Test CPU, 2 cores" in text and "2026-01-01T00:00:00Z" in text and "0.5/0.4/0.3" in text
    assert "`meld_dev.json`: not run yet" in text
    monkeypatch.setattr(sys, "argv", [*argv, "--check"])
    report.main()  # up to date: no exit
    _results(tmp_path, 3.5)  # a new figure: the README no longer matches
    with pytest.raises(SystemExit) as err:
        report.main()
    assert err.value.code == 1 and "out of date" in capsys.readouterr().err


def test_machine_info_describes_the_machine():
    from machine import check_device, end_load, machine_info

    info = end_load(machine_info())
    assert info["cores"] >= 1 and info["ram_gb"] > 0 and info["torch"] and info["device"] == "cpu"
    assert len(info["load_average_at_start"]) == 3 and len(info["load_average_at_end"]) == 3
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            check_device("cuda")


def test_voice_speakers_bench_groups_clips_as_analyze_does():
    """bench_voice_speakers.py extracts each clip's voice features once and scores several groupings;
    each grouping must give what ``DefaultModel.audio_probs`` gives for the same speakers."""
    from bench_voice_speakers import grouped_probs

    from mmva.data.synth import speak
    from mmva.model.default import load_default_model

    model = load_default_model()
    head = model.voice_head()
    if head is None or not hasattr(head, "proba_from_features"):
        pytest.skip("no feature voice head in this default model")
    lines = ["We should start now.", "I have not finished yet.", "Did anyone book the room?",
             "It is on the third floor.", "Thank you so much.", "Let us go through the agenda."]
    clips = [speak(t, pitch=p) for p in (30, 80) for t in lines]
    who = ["Speaker 1"] * 6 + ["Speaker 2"] * 6
    feats = head.features_batch(clips)
    for groups, same in ((who, True), (None, True), (None, False)):
        want = model.audio_probs(clips, 16000, same_speaker=same, speakers=groups)
        got = grouped_probs(head, feats, groups, same)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w["emotion"], atol=1e-6)


def test_voice_speakers_bench_refits_on_the_shipped_heads_own_feature(tmp_path):
    """The held-out heads are refitted on the cache of the feature the shipped head computes: the
    middle-block head's Whisper part is ``whisper-b12``, not the last layer's ``whisper``."""
    from bench_voice_speakers import cache_kinds

    from mmva.model.voice import load_voice_head

    shipped = load_voice_head()
    assert cache_kinds(shipped) == "whisper-b12+acoustic"
    last_layer = json.loads(json.dumps(shipped.config))
    last_layer["feature"].pop("blocks")
    folder = tmp_path / "head"
    folder.mkdir()
    (folder / "voice.json").write_text(json.dumps({**last_layer, "format": "mmva-voice-head-2"}))
    for spec in last_layer["heads"].values():
        (folder / spec["file"]).write_bytes((Path(shipped.source) / spec["file"]).read_bytes())
    assert cache_kinds(load_voice_head(str(folder))) == "whisper+acoustic"
