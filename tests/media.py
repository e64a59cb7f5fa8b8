"""Test media, generated for real: PyAV-written MP4s, espeak-ng speech, a real face photo.

Import from any test: ``from tests.media import write_video, speak, face_photo, tone``.
Every helper writes small files (64-96 px, 1-2 s) so tests stay fast on 2 CPU cores.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from mmva.data.synth import face_photo, speak, write_mp4

__all__ = [
    "write_video", "speak", "face_photo", "tone", "silence", "moving_frames", "face_frames",
    "rotate_mp4", "truncate", "random_bytes_file", "zero_byte_file", "corrupt_video_packets",
    "talking_head", "write_wav", "write_with_subtitles",
]


def tone(seconds: float = 1.0, freq: float = 440.0, sample_rate: int = 16000, amplitude: float = 0.3) -> np.ndarray:
    """A sine tone, float32 mono."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float = 1.0, sample_rate: int = 16000) -> np.ndarray:
    """Digital silence, float32 mono."""
    return np.zeros(int(seconds * sample_rate), np.float32)


def moving_frames(n: int = 10, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """RGB uint8 frames (n, h, w, 3) whose content changes every frame (a bright bar moves right).

    Frame ``i`` has its bar at column ``i * width // n``: tests can tell which frame was decoded.
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    out = np.repeat(base[None], n, axis=0)
    bar = max(2, width // max(n, 1))
    for i in range(n):
        x = i * width // n
        out[i, :, x:x + bar] = 255
    return out


def face_frames(n: int = 10, size: int = 96) -> np.ndarray:
    """A real face photo repeated with a small drift, (n, size, size, 3) uint8."""
    face = face_photo(size)
    return np.stack([np.roll(face, i % 4, axis=1) for i in range(n)])


def write_video(path: str | os.PathLike, frames: np.ndarray | Sequence[np.ndarray] | None = None, *,
                fps: float = 10.0, audio: np.ndarray | None = None, sample_rate: int = 16000,
                frame_times: Sequence[float] | None = None, rotation: int = 0) -> Path:
    """Write an H.264/AAC MP4 (see :func:`mmva.data.synth.write_mp4`), optionally tagged as rotated.

    ``rotation``: clockwise degrees a player must turn the stored frames (a phone held upright
    records landscape frames with rotation 90).
    """
    out = write_mp4(path, frames, fps=fps, audio=audio, sample_rate=sample_rate, frame_times=frame_times)
    if rotation:
        rotate_mp4(out, rotation)
    return out


def talking_head(path: str | os.PathLike, text: str = "hello there, how are you", *, size: int = 96,
                 fps: float = 10.0, **voice: int) -> Path:
    """A face photo with espeak-ng speech, as long as the speech."""
    audio = speak(text, **voice)
    n = max(1, int(np.ceil(len(audio) / 16000 * fps)))
    return write_video(path, face_frames(n, size), fps=fps, audio=audio)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = 16000) -> Path:
    """A 16-bit PCM WAV file (standard library ``wave``)."""
    import wave

    path = Path(path)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def rotate_mp4(path: str | os.PathLike, degrees: int) -> Path:
    """Set the display matrix of the first video track (``tkhd``), as phones do for portrait video.

    Written by hand because PyAV's muxer ignores the old ``rotate`` tag with FFmpeg >= 7.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    i = data.find(b"tkhd")
    if i < 0:
        raise ValueError(f"{path}: no tkhd box")
    version = data[i + 4]
    # box header (type 4) + version/flags (4) + times/id/reserved/duration + reserved/layer/group/volume
    offset = i + 4 + 4 + (20 if version == 0 else 32) + 16
    cw = degrees % 360
    a, b, c, d = {0: (1, 0, 0, 1), 90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}[cw]
    matrix = [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30]
    data[offset:offset + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path


def truncate(src: str | os.PathLike, dst: str | os.PathLike, fraction: float = 0.5) -> Path:
    """Copy the first `fraction` of a file's bytes (a download cut short)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def random_bytes_file(path: str | os.PathLike, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a media name (e.g. ``junk.mp4``)."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return Path(path)


def zero_byte_file(path: str | os.PathLike) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def corrupt_video_packets(path: str | os.PathLike, frames: int = 10, size: int = 64) -> Path:
    """An MP4 with an intact header and video track whose every sample is garbage: no decodable frame.

    Written as a valid file, then the ``mdat`` payload is overwritten with zeros.
    """
    path = write_video(path, moving_frames(frames, size, size))
    data = bytearray(Path(path).read_bytes())
    i = data.find(b"mdat")
    size_field = struct.unpack(">I", data[i - 4:i])[0]
    data[i + 4:i - 4 + size_field] = bytes(size_field - 8)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_with_subtitles(path: str | os.PathLike, frames: np.ndarray, cues: Sequence[tuple[float, float, str]], *,
                         fps: float = 10.0, audio: np.ndarray | None = None) -> Path:
    """A Matroska file with H.264 video (+ AAC audio) and an embedded SubRip subtitle stream.

    PyAV cannot encode subtitles, so the cues go through an in-memory ``.srt`` that is demuxed
    and its packets remuxed, the way ``ffmpeg -c:s copy`` would.
    """
    import io

    import av

    from mmva.data.synth import _timestamp

    srt = "".join(f"{i}\n{_timestamp(s)} --> {_timestamp(e)}\n{text}\n\n" for i, (s, e, text) in enumerate(cues, 1))
    path = Path(path)
    with av.open(io.BytesIO(srt.encode()), format="srt") as src, av.open(str(path), "w", format="matroska") as out:
        vs = out.add_stream("libx264", rate=int(fps))
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        ss = out.add_stream_from_template(src.streams.subtitles[0])
        as_ = out.add_stream("aac", rate=16000, layout="mono") if audio is not None else None
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode())
        if as_ is not None:
            for i in range(0, len(audio), 1024):
                af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024].astype(np.float32), format="flt", layout="mono")
                af.sample_rate, af.pts = 16000, i
                out.mux(as_.encode(af))
            out.mux(as_.encode())
        for packet in src.demux(src.streams.subtitles[0]):
            if packet.size:
                packet.stream = ss
                out.mux(packet)
    return path


def faststart(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Remux an MP4 with its index (``moov``) first, as streaming sites serve it: a copy cut short
    then still opens, and plays up to the cut."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("audio", "video")}
        for packet in inp.demux():
            if packet.dts is None or packet.stream.index not in streams:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return Path(dst)
