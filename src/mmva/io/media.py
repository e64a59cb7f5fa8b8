"""Media decoding with PyAV: probe, sample frames and audio of an utterance, stream long videos.

Everything streams: a clip is read from a seek to ``start`` until ``end`` and only the sampled
frames are kept, so memory does not grow with the length of the file. Rotation from the display
matrix (phone videos) is applied, frames are RGB uint8 with the longer side at most ``max_side``,
audio is float32 mono resampled with ``av.AudioResampler``.

Every failure that concerns the file itself raises :class:`MediaError` naming the file and the
problem; a missing stream is not an error for :func:`decode_clip` (it becomes ``None`` plus a note
in ``clip.problems``).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np

from mmva.io import storage
from mmva.io.clip import DecodedClip

_MAX_BAD_PACKETS = 200  # give up on a stream after this many undecodable packets (no hang on garbage)


class MediaError(Exception):
    """A media file that cannot be read: ``str(err) == f"{path}: {reason}"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep both fields across DataLoader worker processes
        return (MediaError, (self.path, self.reason))


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learns from a file's header and first frame.

    ``width``/``height`` are the displayed size (after rotation); ``rotation`` is the clockwise
    angle applied to the stored frames (0, 90, 180 or 270).
    """

    duration: float
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    rotation: int = 0
    n_subtitle_streams: int = 0


# --------------------------------------------------------------------------------------------
# opening


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[av.container.InputContainer]:
    """Open a local path or URI with PyAV, turning every failure into a MediaError."""
    path = str(path)
    handle = None
    try:
        if storage.is_remote(path):
            fs, fs_path = storage.filesystem(path)  # one client for the existence check and the reads
            try:
                # fsspec file: PyAV seeks in it, only the ranges it reads are fetched
                handle = fs.open(fs_path, "rb")
            except FileNotFoundError:
                raise MediaError(path, "file not found") from None
            if getattr(handle, "size", 1) == 0:
                raise MediaError(path, "empty file (0 bytes)")
            source: Any = handle
        else:
            p = Path(path)
            if not p.exists():
                raise MediaError(path, "file not found")
            if p.is_dir():
                raise MediaError(path, "is a directory, not a media file")
            if p.stat().st_size == 0:
                raise MediaError(path, "empty file (0 bytes)")
            source = path
        try:
            container = av.open(source, "r", metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
            raise MediaError(path, f"not a readable media file: {_short(exc)} "
                                   "(corrupt, truncated, or not audio/video)") from None
        try:
            if not container.streams.video and not container.streams.audio:
                raise MediaError(path, "no audio or video stream")
            yield container
        finally:
            container.close()
    finally:
        if handle is not None:
            handle.close()


def _short(exc: BaseException) -> str:
    # FFmpeg errors repeat errno and file name in str(); their strerror is the useful part
    text = (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:  # cover art is not video
            return s
    return None


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def _duration(container: av.container.InputContainer) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    best = 0.0
    for s in container.streams:
        if s.duration is not None and s.time_base is not None:
            best = max(best, float(s.duration * s.time_base))
    return best


def _rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Clockwise degrees to turn a stored frame upright (display matrix, else `rotate` tag)."""
    ccw = 0
    try:
        ccw = int(round(frame.rotation))  # display matrix: counter-clockwise degrees
    except (AttributeError, ValueError, TypeError):
        ccw = 0
    if not ccw:
        tag = stream.metadata.get("rotate")  # older files: clockwise degrees as a tag
        if tag and tag.lstrip("-").isdigit():
            return int(round(int(tag) / 90)) * 90 % 360
        return 0
    return int(round(-ccw / 90)) * 90 % 360


def _to_rgb(frame: av.VideoFrame, rotation: int, max_side: int | None) -> np.ndarray:
    """RGB uint8 (h, w, 3), longer side <= max_side, rotated upright."""
    w, h = frame.width, frame.height
    scale = min(1.0, max_side / max(w, h)) if max_side else 1.0
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        # area interpolation: a 4K frame shrunk to 256 px without aliasing
        frame = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="AREA")
        arr = frame.to_ndarray()
    else:
        arr = frame.to_ndarray(format="rgb24")
    if rotation:
        arr = np.rot90(arr, k=-(rotation // 90))  # np.rot90 turns counter-clockwise for k > 0
    return np.ascontiguousarray(arr)


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read a file's streams, duration, size, frame rate and rotation.

    >>> info = probe("talk.mp4")            # doctest: +SKIP
    >>> info.duration, info.has_audio       # doctest: +SKIP
    (12.5, True)
    """
    with _open(path) as container:
        v = _video_stream(container)
        a = _audio_stream(container)
        width = height = rotation = 0
        fps = 0.0
        if v is not None:
            width, height = v.codec_context.width, v.codec_context.height
            rate = v.average_rate or v.guessed_rate or v.base_rate
            fps = float(rate) if rate else 0.0
            first = _first_frame(container, v)
            if first is not None:
                rotation = _rotation(first, v)
                width, height = first.width, first.height
            if rotation in (90, 270):
                width, height = height, width
        return MediaInfo(duration=_duration(container), has_video=v is not None, has_audio=a is not None,
                         width=width, height=height, fps=fps, rotation=rotation,
                         n_subtitle_streams=len(container.streams.subtitles))


def _first_frame(container: av.container.InputContainer, v: av.video.stream.VideoStream) -> av.VideoFrame | None:
    bad = 0
    try:
        for packet in container.demux(v):
            try:
                for frame in packet.decode():
                    return frame
            except av.FFmpegError:
                bad += 1
                if bad > _MAX_BAD_PACKETS:
                    return None
    except av.FFmpegError:
        return None
    return None


# --------------------------------------------------------------------------------------------
# clip decoding


class _FrameSampler:
    """Keeps, for each of n target times, the frame on screen at that time (streaming, O(n) memory).

    Targets sit at the centres of n equal bins of [start, end], so both ends of the clip are
    represented and variable frame rates are handled by timestamps, not frame counts.
    """

    def __init__(self, start: float, end: float, n: int, rotation: int, max_side: int) -> None:
        step = (end - start) / n
        self.targets = start + step * (np.arange(n) + 0.5)
        self.rotation, self.max_side = rotation, max_side
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self._prev: tuple[float, av.VideoFrame] | None = None
        self._prev_rgb: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return len(self.frames) >= len(self.targets)

    def _emit_prev(self) -> None:
        assert self._prev is not None
        if self._prev_rgb is None:  # convert once, however many targets this frame covers
            self._prev_rgb = _to_rgb(self._prev[1], self.rotation, self.max_side)
        self.frames.append(self._prev_rgb)
        self.times.append(self._prev[0])

    def add(self, t: float, frame: av.VideoFrame) -> None:
        if self._prev is None:
            self._prev = (t, frame)  # targets before the first frame get the first frame
        while not self.done and self.targets[len(self.frames)] < t:
            self._emit_prev()
        if self._prev[1] is not frame:
            self._prev, self._prev_rgb = (t, frame), None

    def finish(self) -> None:
        while self._prev is not None and not self.done:
            self._emit_prev()


class _ThinningSampler:
    """Fallback when the duration is unknown: keep every k-th frame, doubling k to bound memory."""

    def __init__(self, n: int, rotation: int, max_side: int) -> None:
        self.n, self.rotation, self.max_side = n, rotation, max_side
        self.kept: list[tuple[float, np.ndarray]] = []
        self.every, self.count = 1, 0
        self.done = False

    def add(self, t: float, frame: av.VideoFrame) -> None:
        if self.count % self.every == 0:
            self.kept.append((t, _to_rgb(frame, self.rotation, self.max_side)))
            if len(self.kept) > 4 * self.n:
                self.kept, self.every = self.kept[::2], self.every * 2
        self.count += 1

    def finish(self) -> None:
        if self.kept:
            idx = np.linspace(0, len(self.kept) - 1, self.n).round().astype(int)
            picked = [self.kept[i] for i in idx]
            self.times = [t for t, _ in picked]
            self.frames = [f for _, f in picked]
        else:
            self.times, self.frames = [], []


def _seek(container: av.container.InputContainer, start: float | None) -> None:
    if start and start > 0:
        try:
            # container-level seek (microseconds) lands on the keyframe at or before `start`
            container.seek(int(start * av.time_base), backward=True, any_frame=False)
        except av.FFmpegError:
            pass  # unseekable input: decode from the beginning and skip frames before start


def _frame_time(frame: av.frame.Frame, fallback: float) -> float:
    t = frame.time
    return float(t) if t is not None else fallback


def _decode_streams(container: av.container.InputContainer, v: Any, a: Any, *,
                    start: float, end: float | None, on_video: Any, video_done: Any,
                    on_audio: Any, problems: list[str]) -> None:
    """Demux once from `start`, feeding decoded frames to the callbacks until `end` (or EOF)."""
    streams = [s for s in (v, a) if s is not None]
    finished = {s.index: False for s in streams}
    bad = {s.index: 0 for s in streams}
    n_video = 0
    fps = float(v.average_rate or v.guessed_rate or 25) if v is not None else 25.0
    try:
        demux = container.demux(*streams)
        for packet in demux:
            idx = packet.stream.index
            if finished.get(idx, True):
                if all(finished.values()):
                    break
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                bad[idx] += 1
                if bad[idx] == 1:
                    problems.append(f"{packet.stream.type} packet(s) could not be decoded ({_short(exc)})")
                if bad[idx] > _MAX_BAD_PACKETS:
                    finished[idx] = True
                continue
            for frame in frames:
                if packet.stream is v:
                    t = _frame_time(frame, start + n_video / fps)
                    n_video += 1
                    if end is not None and t > end:
                        on_video(t, frame)  # the frame after `end` tells the sampler where the last one stops
                        finished[idx] = True
                        break
                    on_video(t, frame)
                    if video_done():
                        finished[idx] = True
                        break
                else:
                    t = _frame_time(frame, start)
                    on_audio(t, frame)
                    if end is not None and t > end:
                        finished[idx] = True
                        break
            if all(finished.values()):
                break
    except av.FFmpegError as exc:
        problems.append(f"decoding stopped early ({_short(exc)})")
    except (EOFError, OSError) as exc:
        problems.append(f"file ended early ({_short(exc)})")


class _AudioCollector:
    """Resamples decoded audio to mono float32 at `rate` and trims it to [start, end]."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.chunks: list[np.ndarray] = []
        self.t0: float | None = None

    def add(self, t: float, frame: av.AudioFrame) -> None:
        if self.t0 is None:
            self.t0 = t
        frame.pts = None  # let the resampler count samples itself (timestamps are tracked by t0)
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def result(self, start: float | None, end: float | None) -> np.ndarray | None:
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1))
        if self.t0 is None:
            return None
        audio = np.concatenate(self.chunks).astype(np.float32) if self.chunks else np.zeros(0, np.float32)
        lo = max(0, int(round(((start or 0.0) - self.t0) * self.rate)))
        hi = int(round((end - self.t0) * self.rate)) if end is not None else len(audio)
        return np.clip(audio[lo:max(lo, hi)], -1.0, 1.0)


def _check_range(path: str, start: float | None, end: float | None) -> None:
    if start is not None and start < 0:
        raise MediaError(path, f"start time {start} is negative")
    if start is not None and end is not None and end <= start:
        raise MediaError(path, f"end time {end} is not after start time {start}")


def decode_clip(path: str | os.PathLike, *, start: float | None = None, end: float | None = None,
                num_frames: int = 30, max_side: int = 256, sample_rate: int = 16000, text: str = "",
                want_video: bool = True, want_audio: bool = True) -> DecodedClip:
    """Decode one utterance: `num_frames` frames spread over [start, end] and its 16 kHz mono audio.

    A missing stream gives ``None`` and a note in ``clip.problems``; a file that cannot be read at
    all raises :class:`MediaError`. If the file has fewer frames than ``num_frames`` in the range,
    frames repeat (their ``frame_times`` show it).

    >>> clip = decode_clip("dia0_utt0.mp4", num_frames=8, max_side=128)   # doctest: +SKIP
    >>> clip.frames.shape, clip.audio.dtype                                # doctest: +SKIP
    ((8, 72, 128, 3), dtype('float32'))
    """
    path = str(path)
    _check_range(path, start, end)
    problems: list[str] = []
    clip = DecodedClip(text=text, sample_rate=sample_rate, source=path, problems=problems)
    with _open(path) as container:
        v = _video_stream(container) if want_video else None
        a = _audio_stream(container) if want_audio else None
        if want_video and v is None:
            problems.append("no video stream")
        if want_audio and a is None:
            problems.append("no audio stream")
        if v is None and a is None:
            return clip
        if v is not None:
            v.thread_type = "AUTO"
        duration = _duration(container)
        s = start or 0.0
        e = end if end is not None else (duration if duration > 0 else None)
        if e is not None and duration > 0 and s >= duration:
            problems.append(f"start time {s:.3f}s is past the end of the file ({duration:.3f}s)")
            return clip
        state: dict[str, Any] = {"sampler": None}
        audio = _AudioCollector(sample_rate) if a is not None else None

        def on_video(t: float, frame: av.VideoFrame) -> None:
            if state["sampler"] is None:
                rot = _rotation(frame, v)
                state["sampler"] = (_FrameSampler(s, e, num_frames, rot, max_side) if e is not None
                                    else _ThinningSampler(num_frames, rot, max_side))
            # frames before `start` (decoded from the keyframe) matter only as "on screen at start"
            if e is not None or t >= s - 1e-6:
                state["sampler"].add(t, frame)

        def video_done() -> bool:
            return state["sampler"] is not None and state["sampler"].done

        def on_audio(t: float, frame: av.AudioFrame) -> None:
            audio.add(t, frame)

        _seek(container, start)
        _decode_streams(container, v, a, start=s, end=e, on_video=on_video, video_done=video_done,
                        on_audio=on_audio if audio is not None else (lambda t, f: None), problems=problems)
        if v is not None:
            sampler = state["sampler"]
            if sampler is not None:
                sampler.finish()
            if sampler is None or not sampler.frames:
                problems.append("no decodable video frames" + (" in the requested range" if start or end else ""))
            else:
                clip.frames = np.stack(sampler.frames)
                clip.frame_times = np.asarray(sampler.times, dtype=np.float64)
        if audio is not None:
            clip.audio = audio.result(start, end if end is not None else None)
            if clip.audio is None or clip.audio.size == 0:
                clip.audio = None
                problems.append("no decodable audio" + (" in the requested range" if start or end else ""))
    return clip


def read_audio(path: str | os.PathLike, sample_rate: int = 16000, start: float | None = None,
               end: float | None = None) -> np.ndarray:
    """The audio track as float32 mono at `sample_rate`, optionally only [start, end] seconds.

    >>> wave = read_audio("talk.mp4", start=1.0, end=3.5)   # doctest: +SKIP
    >>> wave.shape
    (40000,)
    """
    clip = decode_clip(path, start=start, end=end, sample_rate=sample_rate, want_video=False)
    if clip.audio is None:
        raise MediaError(str(path), "; ".join(clip.problems) or "no audio")
    return clip.audio


def iter_frames(path: str | os.PathLike, fps: float = 2.0, max_side: int = 320,
                start: float | None = None, end: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(seconds, RGB uint8 frame)`` about `fps` times a second, streaming (constant memory).

    >>> for t, frame in iter_frames("talk.mp4", fps=1.0):   # doctest: +SKIP
    ...     print(t, frame.shape)
    0.0 (180, 320, 3)
    """
    path = str(path)
    _check_range(path, start, end)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with _open(path) as container:
        v = _video_stream(container)
        if v is None:
            raise MediaError(path, "no video stream")
        v.thread_type = "AUTO"
        _seek(container, start)
        s, step = start or 0.0, 1.0 / fps
        next_t, rotation, n, bad = s, None, 0, 0
        rate = float(v.average_rate or v.guessed_rate or 25)
        # Sampling far below the frame rate: frames that no other frame refers to (most B-frames of
        # camera and x264 files) need not be decoded at all (~35% less decoding CPU on a 720p30 H.264
        # talking head); a sampled frame then lies at most a few frames after its time. Turned back
        # off if decoded frames come further apart than a quarter of the sampling step (a stream that
        # marks too much as non-reference).
        may_skip, skipping = rate / fps >= 4, False  # skipping starts once frames carry their own times
        last_t: float | None = None
        try:
            for packet in container.demux(v):
                if (skipping and last_t is not None and packet.pts is not None and packet.time_base is not None
                        and float(packet.pts * packet.time_base) - last_t > step / 4 + 0.5):
                    # packets run on with no frame coming out: too much was skipped (0.5 s: B-frame delay)
                    v.codec_context.skip_frame, skipping, may_skip = "DEFAULT", False, False
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    bad += 1
                    if bad > _MAX_BAD_PACKETS:
                        raise MediaError(path, "too many undecodable video packets") from None
                    continue
                for frame in frames:
                    t = _frame_time(frame, n / rate)
                    n += 1
                    if skipping and (frame.time is None or (last_t is not None and t - last_t > step / 4)):
                        v.codec_context.skip_frame, skipping, may_skip = "DEFAULT", False, False
                    elif may_skip and not skipping and frame.time is not None:
                        v.codec_context.skip_frame, skipping = "NONREF", True
                    last_t = t
                    if end is not None and t > end:
                        return
                    if t + 1e-6 < next_t:
                        continue
                    if rotation is None:
                        rotation = _rotation(frame, v)
                    yield t, _to_rgb(frame, rotation, max_side)
                    while next_t <= t + 1e-6:
                        next_t += step
        except av.FFmpegError as exc:
            if n == 0:
                raise MediaError(path, f"no decodable video frames ({_short(exc)})") from None
        if n == 0:
            raise MediaError(path, "no decodable video frames")


def read_subtitles_stream(path: str | os.PathLike) -> list[tuple[float, float, str]]:
    """Cues ``(start, end, text)`` of the first embedded text subtitle stream (empty if none).

    >>> read_subtitles_stream("movie_with_subs.mkv")   # doctest: +SKIP
    [(1.0, 2.5, 'Hello there.')]
    """
    path = str(path)
    cues: list[tuple[float, float, str]] = []
    with _open_any(path) as container:
        if not container.streams.subtitles:
            return []
        stream = container.streams.subtitles[0]
        try:
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                try:
                    subs = packet.decode()
                except av.FFmpegError:
                    continue
                t0 = float(packet.pts * stream.time_base)
                dur = float(packet.duration * stream.time_base) if packet.duration else 0.0
                for sub in subs:
                    # PyAV >= 14 yields the rectangles themselves; older versions a SubtitleSet
                    rects = getattr(sub, "rects", None) or [sub]
                    text = " ".join(_rect_text(r) for r in rects).strip()
                    if not text:
                        continue
                    begin, finish = t0, t0 + dur
                    if getattr(sub, "end_display_time", 0):
                        begin, finish = t0 + sub.start_display_time / 1000.0, t0 + sub.end_display_time / 1000.0
                    cues.append((round(begin, 3), round(max(finish, begin), 3), text))
        except av.FFmpegError:
            pass  # keep the cues read so far
    return cues


@contextmanager
def _open_any(path: str) -> Iterator[av.container.InputContainer]:
    # subtitle-only containers (.mkv with just subtitles) are valid here, unlike for decode_clip
    try:
        with _open(path) as container:
            yield container
    except MediaError as err:
        if err.reason != "no audio or video stream":
            raise
        with av.open(path) as container:
            yield container


def _rect_text(rect: Any) -> str:
    """Plain text of a subtitle rectangle (ASS dialogue carries override tags and \\N breaks)."""
    text: Any = getattr(rect, "dialogue", None) or getattr(rect, "text", None)
    if not text:
        ass = getattr(rect, "ass", b"") or b""
        ass = ass.decode("utf-8", "replace") if isinstance(ass, bytes) else str(ass)
        text = ass.split(",", 8)[-1] if ass.count(",") >= 8 else ass  # ASS event: text is the 9th field
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = re.sub(r"\{[^}]*\}", "", str(text)).replace("\\N", "\n").replace("\\n", "\n")
    return text.strip()
