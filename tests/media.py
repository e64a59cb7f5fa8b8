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
    "talking_head", "write_wav", "write_with_subtitles", "mouth_frames", "two_faces_frames", "two_faces_talking",
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


# -- two faces taking turns (issue 21: the face that speaks) -----------------------------------------
TWO_FACES_SIZE = (240, 400)  # frame height, width
LEFT_FACE = (slice(30, 210), slice(10, 190))  # rows, columns of the larger (180 px) face
RIGHT_FACE = (slice(50, 194), slice(236, 380))  # the smaller (144 px) face, mirrored: another pose


def mouth_frames(size: int, n: int, talks: bool) -> np.ndarray:
    """The face photo ``n`` times; when ``talks``, its mouth opens and closes (a dark opening drawn on
    her own mouth, 1-12 % of the face tall, a new height every frame)."""
    import cv2

    from mmva.encoders.face import detect_faces

    face = face_photo(size)
    x, y, w, h = detect_faces(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY))[0]
    out = np.repeat(face[None], n, axis=0)
    if talks:
        for i, frame in enumerate(out):
            opening = int(h * (0.01, 0.06, 0.12, 0.04)[i % 4])
            cv2.ellipse(frame, (x + w // 2, y + int(0.74 * h)), (w // 7, max(1, opening)), 0, 0, 360,
                        (70, 25, 35), -1)
    return out


def two_faces_frames(talkers: Sequence[str | None]) -> np.ndarray:
    """One frame per item of ``talkers``: the two faces side by side (the left one larger), the mouth
    of ``"left"``/``"right"`` moving, none for None."""
    faces = {side: (mouth_frames(size, 1, False)[0], mouth_frames(size, 4, True))
             for side, size in (("left", 180), ("right", 144))}
    frames = np.full((len(talkers), *TWO_FACES_SIZE, 3), 110, np.uint8)
    for side, (rows, cols) in (("left", LEFT_FACE), ("right", RIGHT_FACE)):
        still, talking = faces[side]
        for i, who in enumerate(talkers):
            face = talking[i % 4] if who == side else still
            frames[i, rows, cols] = face[:, ::-1] if side == "right" else face
    return frames


def two_faces_talking(path: str | os.PathLike, turns: Sequence[tuple[int, str]], sides: Sequence[str], *,
                      moving: Sequence[bool] | None = None, pauses: Sequence[float] | None = None,
                      fps: float = 4.0, seed: int = 0) -> tuple[Path, list[tuple[float, float, int]]]:
    """An MP4 of two faces whose owners speak in turn with distinct espeak-ng voices.

    ``turns``: (voice index into ``synth.CONVERSATION_VOICES``, text); ``sides[k]``: the face of voice
    ``k`` ("left": the larger face, "right": the smaller). During turn ``i`` that face's mouth moves
    when ``moving[i]`` (default: always); between turns no mouth moves. ``pauses[i]``: seconds of
    silence before turn ``i + 1`` (default 0.6). Returns the file and the reference turns
    ``(start, end, voice)`` in seconds.
    """
    from mmva.data.synth import conversation

    moving = list(moving) if moving is not None else [True] * len(turns)
    gaps = list(pauses) if pauses is not None else [0.6] * (len(turns) - 1)
    parts, ref, t = [], [], 0.0
    for i, (who, text) in enumerate(turns):
        clip, (span,) = conversation([(who, text)], seed=seed + i)
        if i:
            parts.append(silence(gaps[i - 1]))
            t += gaps[i - 1]
        ref.append((t + span[0], t + span[1], who))
        parts.append(clip)
        t += len(clip) / 16000
    audio = np.concatenate(parts)
    times = np.arange(int(np.ceil(len(audio) / 16000 * fps))) / fps
    talkers = []
    for tt in times:
        turn = next((i for i, (s, e, _) in enumerate(ref) if s <= tt < e), None)
        talkers.append(sides[ref[turn][2]] if turn is not None and moving[turn] else None)
    return write_video(path, two_faces_frames(talkers), fps=fps, audio=audio), ref
