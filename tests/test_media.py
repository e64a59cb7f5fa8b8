"""io.media on real files written with PyAV: sampling, ranges, rotation, VFR, bad media, fuzzing."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mmva.io.media import MediaError, decode_clip, iter_frames, probe, read_audio, read_subtitles_stream
from tests.media import (
    corrupt_video_packets, face_frames, moving_frames, random_bytes_file, rotate_mp4, silence, speak, tone,
    truncate, write_video, write_wav, zero_byte_file,
)


def bar_column(frame: np.ndarray) -> int:
    """Column of the bright bar drawn by ``moving_frames`` (tells which source frame was decoded)."""
    return int(np.argmax(frame.mean(axis=(0, 2))))


@pytest.fixture(scope="module")
def av_clip(tmp_path_factory):
    """2 s, 10 fps, 64x48 moving bar + 440 Hz tone."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    return write_video(path, moving_frames(20, 48, 64), fps=10, audio=tone(2.0))


def test_probe_reports_streams_size_rate_and_duration(av_clip):
    info = probe(av_clip)
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.fps, info.rotation) == (64, 48, 10.0, 0)
    assert info.duration == pytest.approx(2.0, abs=0.1)
    assert info.n_subtitle_streams == 0


def test_decode_clip_samples_frames_across_the_whole_clip(av_clip):
    clip = decode_clip(av_clip, num_frames=5, max_side=256)
    assert clip.frames.shape == (5, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.problems == []
    # bin centres of [0, 2]: 0.2, 0.6, 1.0, 1.4, 1.8 s -> source frames 2, 6, 10, 14, 18
    np.testing.assert_allclose(clip.frame_times, [0.2, 0.6, 1.0, 1.4, 1.8], atol=1e-6)
    expected = [k * 64 // 20 + 1 for k in (2, 6, 10, 14, 18)]  # bar of frame k starts at k*w//n, 3 px wide
    assert np.abs(np.array([bar_column(f) for f in clip.frames]) - expected).max() <= 2
    assert clip.audio.dtype == np.float32 and clip.sample_rate == 16000
    assert abs(len(clip.audio) - 32000) <= 1024  # the whole 2 s (AAC frames are 1024 samples)
    # the tone survives AAC + resampling: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(clip.audio[4000:20000]))
    assert np.fft.rfftfreq(16000, 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)


def test_decode_clip_range_and_resize(av_clip):
    clip = decode_clip(av_clip, start=0.5, end=1.5, num_frames=4, max_side=32)
    assert clip.frames.shape == (4, 24, 32, 3)  # longer side 64 -> 32, aspect kept
    assert all(0.5 <= t <= 1.5 for t in clip.frame_times)
    assert len(clip.audio) == 16000
    only_audio = read_audio(av_clip, start=1.0, end=1.25)
    assert only_audio.shape == (4000,) and only_audio.dtype == np.float32


def test_decode_clip_keeps_what_it_can_and_says_what_is_missing(tmp_path):
    video_only = write_video(tmp_path / "silent_film.mp4", moving_frames(8))
    clip = decode_clip(video_only, num_frames=4)
    assert clip.frames is not None and clip.audio is None and clip.problems == ["no audio stream"]
    with pytest.raises(MediaError) as err:
        read_audio(video_only)
    assert err.value.path == str(video_only) and "no audio stream" in str(err.value)

    audio_only = write_video(tmp_path / "voice.m4a", None, audio=speak("only my voice"))
    clip = decode_clip(audio_only)
    assert clip.frames is None and clip.problems == ["no video stream"] and clip.has_audio
    assert probe(audio_only).has_video is False
    with pytest.raises(MediaError, match="no video stream"):
        list(iter_frames(audio_only))

    wav = write_wav(tmp_path / "voice.wav", tone(0.5))
    assert read_audio(wav).shape == (8000,)


def test_silence_decodes_to_zeros(tmp_path):
    clip = decode_clip(write_video(tmp_path / "quiet.mp4", moving_frames(10), audio=silence(1.0)))
    assert clip.has_audio and float(np.abs(clip.audio).max()) < 1e-3


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_phone_video_is_turned_upright(tmp_path, degrees):
    frames = np.zeros((4, 32, 64, 3), np.uint8)
    frames[:, :, :32] = 255  # stored landscape: left half white
    path = rotate_mp4(write_video(tmp_path / "phone.mp4", frames, fps=4), degrees)
    info = probe(path)
    assert info.rotation == degrees
    assert (info.width, info.height) == ((32, 64) if degrees in (90, 270) else (64, 32))
    frame = decode_clip(path, num_frames=1).frames[0]
    t, stream_frame = next(iter_frames(path))
    np.testing.assert_array_equal(frame, stream_frame)
    h, w = frame.shape[:2]
    white = {90: frame[: h // 2], 180: frame[:, w // 2:], 270: frame[h // 2:]}[degrees]  # where "left" went
    other = {90: frame[h // 2:], 180: frame[:, : w // 2], 270: frame[: h // 2]}[degrees]
    assert white.mean() > 200 and other.mean() < 50


def test_variable_frame_rate_uses_timestamps(tmp_path):
    times = [0.0, 0.1, 0.15, 0.7, 1.5, 1.6]
    path = write_video(tmp_path / "vfr.mp4", moving_frames(6), frame_times=times)
    clip = decode_clip(path, num_frames=8)
    # targets 0.1, 0.3, ..., 1.5: each gets the frame on screen at that time
    np.testing.assert_allclose(clip.frame_times, [0.1, 0.15, 0.15, 0.7, 0.7, 0.7, 0.7, 1.5], atol=1e-3)
    streamed = [t for t, _ in iter_frames(path, fps=2.0)]
    assert streamed == pytest.approx([0.0, 0.7, 1.5], abs=1e-3)


def test_one_fps_video_repeats_frames_rather_than_inventing_them(tmp_path):
    path = write_video(tmp_path / "slow.mp4", moving_frames(3), fps=1, audio=tone(3.0))
    clip = decode_clip(path, num_frames=6)
    np.testing.assert_allclose(clip.frame_times, [0, 0, 1, 1, 2, 2])
    assert probe(path).fps == 1.0


def test_4k_frame_is_downscaled(tmp_path):
    y, x = np.mgrid[0:2160, 0:3840]
    frame = np.stack([x * 255 // 3840, y * 255 // 2160, np.full_like(x, 128)], -1).astype(np.uint8)
    path = write_video(tmp_path / "uhd.mp4", frame[None], fps=1)
    assert (probe(path).width, probe(path).height) == (3840, 2160)
    clip = decode_clip(path, num_frames=2, max_side=256)
    assert clip.frames.shape == (2, 144, 256, 3)
    assert abs(int(clip.frames[0, 72, 250, 0]) - 250) < 12  # the gradient survives area downscaling
    assert next(iter_frames(path, max_side=320))[1].shape == (180, 320, 3)


def test_iter_frames_streams_at_the_requested_rate(tmp_path):
    path = write_video(tmp_path / "long.mp4", moving_frames(60, 32, 32), fps=10)  # 6 s
    times = [t for t, f in iter_frames(path, fps=2.0)]
    assert times == pytest.approx(np.arange(0, 6, 0.5), abs=1e-6)
    window = [t for t, f in iter_frames(path, fps=1.0, start=2.0, end=4.0)]
    assert window == pytest.approx([2.0, 3.0, 4.0], abs=1e-6)


def test_sampling_a_b_frame_file_skips_frames_but_keeps_times_and_content(tmp_path, monkeypatch):
    """Camera/x264 files have B-frames; sampling 2 of 30 frames a second skips decoding the ones no
    other frame refers to, and each sampled frame is still the one shown at its time (a few frames late
    at most)."""
    import av

    n, fps, width = 90, 30, 720
    frames = moving_frames(n, 64, width)  # frame i: an 8-pixel bar at column 8 i
    path = tmp_path / "bframes.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, 64, "yuv420p"
        vs.options = {"preset": "medium", "bf": "3", "crf": "18"}  # x264's defaults: B-frames
        for f in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(vs.encode())
    with av.open(str(path)) as c:  # the file really has frames nothing refers to
        assert c.streams.video[0].codec_context.has_b_frames
    import mmva.io.media as media

    decoded = []
    frame_time = media._frame_time
    monkeypatch.setattr(media, "_frame_time", lambda frame, fallback: decoded.append(1) or frame_time(frame, fallback))
    sampled = list(iter_frames(path, fps=2.0, max_side=width))
    assert len(sampled) == 6
    assert len(decoded) < 0.8 * n  # frames nothing refers to were not decoded at all
    decoded.clear()
    assert len(list(iter_frames(path, fps=10.0, max_side=width))) == 30 and len(decoded) == n  # 1 in 3: all
    for target, (t, frame) in zip(np.arange(0, 3, 0.5), sampled):
        assert target - 1e-6 <= t <= target + 3 / fps
        bright = np.flatnonzero(frame.mean(axis=(0, 2)) > 150)
        assert round((bright.mean() - 3.5) / 8) == round(t * fps)  # the frame shown at time t


def test_seek_makes_a_late_window_cheap(tmp_path):
    """A window near the end of a long file is read from a seek, not decoded from the start."""
    frames = np.repeat(face_frames(1, 32), 1200, axis=0)  # 20 min at 1 fps
    path = write_video(tmp_path / "lecture.mp4", frames, fps=1)
    t0 = time.perf_counter()
    clip = decode_clip(path, start=1150.0, end=1160.0, num_frames=4)
    late = time.perf_counter() - t0
    assert all(1150 <= t <= 1160 for t in clip.frame_times)
    t0 = time.perf_counter()
    decode_clip(path, num_frames=4)
    whole = time.perf_counter() - t0
    assert late < whole


def test_two_hour_video_streams_with_bounded_memory(tmp_path):
    """A two-hour input (a still image at 1 fps, ~2 s to write) is read frame by frame, not loaded."""
    psutil = pytest.importorskip("psutil")
    still = face_frames(1, 96)[0]
    path = write_video(tmp_path / "two_hours.mp4", [still] * 7200, fps=1)
    assert probe(path).duration == pytest.approx(7200, abs=1)
    proc = psutil.Process()
    before, peak, times = proc.memory_info().rss, 0, []
    for t, frame in iter_frames(path, fps=1 / 60):
        times.append(t)
        peak = max(peak, proc.memory_info().rss)
    assert len(times) == 120 and times[-1] == pytest.approx(7140)
    assert peak - before < 50 * 2**20  # all its frames decoded would be ~200 MB of pixels
    clip = decode_clip(path, start=7000.0, end=7010.0, num_frames=4)
    assert all(7000 <= t <= 7010 for t in clip.frame_times)


@pytest.mark.parametrize("case", ["zero-byte", "random-bytes", "truncated", "missing", "directory"])
def test_unreadable_files_raise_media_error_naming_the_file(tmp_path, av_clip, case):
    path = tmp_path / "bad.mp4"
    if case == "zero-byte":
        zero_byte_file(path)
        reason = "empty file (0 bytes)"
    elif case == "random-bytes":
        random_bytes_file(path)
        reason = "not a readable media file"
    elif case == "truncated":
        truncate(av_clip, path, 0.6)  # PyAV writes the index (moov) last: it is cut off
        reason = "not a readable media file"
    elif case == "missing":
        reason = "file not found"
    else:
        path = tmp_path
        reason = "is a directory"
    for call in (probe, decode_clip, read_audio, lambda p: list(iter_frames(p))):
        with pytest.raises(MediaError) as err:
            call(path)
        assert err.value.path == str(path) and reason in err.value.reason
        assert str(err.value).startswith(f"{path}: ")


def test_container_without_decodable_frames(tmp_path):
    path = corrupt_video_packets(tmp_path / "garbled.mp4")
    assert probe(path).has_video
    clip = decode_clip(path, num_frames=4)
    assert clip.frames is None and "no decodable video frames" in clip.problems
    with pytest.raises(MediaError, match="no decodable video frames"):
        list(iter_frames(path))


def test_range_past_the_end_is_reported_not_crashed(av_clip):
    clip = decode_clip(av_clip, start=10.0, end=12.0)
    assert clip.frames is None and clip.audio is None
    assert any("past the end" in p for p in clip.problems)
    with pytest.raises(MediaError, match="not after start"):
        decode_clip(av_clip, start=1.0, end=0.5)


def test_media_error_survives_pickling_for_dataloader_workers():
    err = pickle.loads(pickle.dumps(MediaError("a.mp4", "empty file (0 bytes)")))
    assert (err.path, err.reason, str(err)) == ("a.mp4", "empty file (0 bytes)", "a.mp4: empty file (0 bytes)")


def test_embedded_subtitles_are_read(tmp_path):
    from tests.media import write_with_subtitles

    cues = [(1.0, 2.5, "Hello there."), (3.0, 3.4, "Second cue, with a comma"),
            (3.5, 3.9, "<i>Styled</i> text\non two lines")]
    path = write_with_subtitles(tmp_path / "subs.mkv", moving_frames(40, 32, 32), cues, fps=10)
    assert probe(path).n_subtitle_streams == 1
    assert read_subtitles_stream(path) == [*cues[:2], (3.5, 3.9, "Styled text\non two lines")]
    assert read_subtitles_stream(write_video(tmp_path / "none.mp4", moving_frames(4))) == []


def test_decode_from_s3(s3_bucket, av_clip, aws_env):
    from mmva.io import storage

    uri = f"{s3_bucket}/clips/clip.mp4"
    storage.upload_file_atomic(av_clip, uri)
    clip = decode_clip(uri, num_frames=3)
    assert clip.frames.shape == (3, 48, 64, 3) and clip.has_audio
    with pytest.raises(MediaError, match="file not found"):
        decode_clip(f"{s3_bucket}/clips/nope.mp4")
    storage.write_bytes_atomic(f"{s3_bucket}/clips/empty.mp4", b"")
    with pytest.raises(MediaError, match=r"empty\.mp4: empty file \(0 bytes\)"):
        probe(f"{s3_bucket}/clips/empty.mp4")


FUZZ = textwrap.dedent("""
    import json, sys, numpy as np
    from mmva.io.media import MediaError, decode_clip, probe
    data = open(sys.argv[1], "rb").read()
    rng = np.random.default_rng(int(sys.argv[2]))
    out = sys.argv[3]
    outcomes = {"ok": 0, "error": 0}
    for i in range(40):
        buf = bytearray(data)
        kind = i % 4
        if kind == 0:  # flip bytes anywhere
            for pos in rng.integers(0, len(buf), 20):
                buf[pos] = int(rng.integers(0, 256))
        elif kind == 1:  # flip bytes in the header / index boxes
            for pos in rng.integers(0, min(len(buf), 2000), 10):
                buf[pos] = int(rng.integers(0, 256))
        elif kind == 2:  # cut anywhere
            buf = buf[: int(rng.integers(1, len(buf)))]
        else:  # pure noise
            buf = bytearray(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
        open(out, "wb").write(bytes(buf))
        try:
            probe(out)
            decode_clip(out, num_frames=4)
            outcomes["ok"] += 1
        except MediaError:
            outcomes["error"] += 1
    print(json.dumps(outcomes))
""")


def test_fuzzed_media_neither_hangs_nor_kills_the_process(tmp_path, av_clip):
    """Random and mutated bytes: every call returns or raises MediaError, in a child process we watch."""
    proc = subprocess.run([sys.executable, "-c", FUZZ, str(av_clip), "7", str(tmp_path / "fuzz.mp4")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcomes["ok"] + outcomes["error"] == 40 and outcomes["error"] > 0


def test_stream_without_duration_is_still_sampled_across(tmp_path):
    """A raw H.264 elementary stream has no container duration: frames are thinned while streaming."""
    import av

    frames = moving_frames(30, 32, 32)
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    assert probe(path).duration == 0.0
    clip = decode_clip(path, num_frames=5)
    columns = [bar_column(f) for f in clip.frames]
    assert clip.frames.shape == (5, 32, 32, 3) and columns == sorted(columns)
    assert columns[0] <= 2 and columns[-1] >= 28  # first and last frames of the stream
