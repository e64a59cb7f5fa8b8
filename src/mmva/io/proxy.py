"""A small playable copy of a video or audio file, for the HTML report's player (``--embed-video``).

H.264 (yuv420p, longer side at most ``max_side``, at most ``max_fps``) and AAC mono in an MP4 with
the index at the front (``+faststart``), so every current browser plays and seeks it from disk.
Frames are turned upright (phone videos) and resampled to a constant rate; audio keeps its
timestamps, so the copy stays in step with the times of the report.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

from mmva.io import storage
from mmva.io.media import MediaError, _audio_stream, _open, _short, _to_rgb, _video_stream, probe


def write_proxy(src: str | os.PathLike, dst: str | os.PathLike, *, max_side: int = 480, max_fps: float = 25.0,
                crf: int = 30, audio_bitrate: int = 64_000) -> str:
    """Transcode ``src`` (local or ``s3://``) into a small MP4 at ``dst`` (local or ``s3://``), atomically.

    Raises :class:`~mmva.io.media.MediaError` when ``src`` cannot be read or encoded.

    >>> write_proxy("talk.mp4", "reports/talk.mmva.mp4")   # doctest: +SKIP
    'reports/talk.mmva.mp4'
    """
    def encode(tmp: str) -> None:
        try:
            _transcode(str(src), tmp, max_side, max_fps, crf, audio_bitrate)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(src, f"cannot make a playable copy: {_short(exc)}") from None

    return storage.write_atomic(str(dst), encode, fsync=False)


def _transcode(src: str, dst: str, max_side: int, max_fps: float, crf: int, audio_bitrate: int) -> None:
    info = probe(src)
    with _open(src) as inp, av.open(dst, "w", format="mp4", options={"movflags": "+faststart"}) as out:
        v_in, a_in = _video_stream(inp), _audio_stream(inp)
        v_out = a_out = resampler = None
        # Every stream is added before the first packet is written (the MP4 header lists them).
        if v_in is not None and info.width and info.height:
            fps = min(max_fps, info.fps or max_fps)
            rate = Fraction(fps).limit_denominator(1001)
            v_out = out.add_stream("libx264", rate=rate)
            scale = min(1.0, max_side / max(info.width, info.height))  # as _to_rgb scales
            v_out.width = max(2, round(info.width * scale) // 2 * 2)  # yuv420p: even sides
            v_out.height = max(2, round(info.height * scale) // 2 * 2)
            v_out.pix_fmt = "yuv420p"
            v_out.options = {"crf": str(crf), "preset": "veryfast"}
        if a_in is not None:
            a_out = out.add_stream("aac", rate=44100, layout="mono")
            a_out.bit_rate = audio_bitrate
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=44100)
        if v_out is None and a_out is None:
            raise ValueError("no audio or video stream to copy")
        next_i = 0
        for packet in inp.demux(*[s for s, o in ((v_in, v_out), (a_in, a_out)) if o is not None]):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue  # a damaged packet: skipped, as the analysis skips it
            for frame in frames:
                if isinstance(frame, av.AudioFrame):
                    for f in resampler.resample(frame):
                        out.mux(a_out.encode(f))
                    continue
                if frame.time is None:
                    continue
                img = None
                # Constant rate: output frame i (at i / fps) shows the source frame nearest to it.
                while next_i / fps <= frame.time + 0.5 / fps:
                    if img is None:
                        img = _scaled(frame, info.rotation, max_side, v_out.width, v_out.height)
                        img.time_base = 1 / rate  # pts counts output frames
                    img.pts = next_i
                    out.mux(v_out.encode(img))
                    next_i += 1
        if a_out is not None:
            for f in resampler.resample(None):
                out.mux(a_out.encode(f))
            out.mux(a_out.encode(None))
        if v_out is not None:
            out.mux(v_out.encode(None))


def _scaled(frame: av.VideoFrame, rotation: int, max_side: int, width: int, height: int) -> av.VideoFrame:
    """The frame upright at ``width`` x ``height`` in yuv420p (one swscale pass when not rotated)."""
    if not rotation:
        out = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
    else:
        rgb = _to_rgb(frame, rotation, max_side)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]),
                                         format="rgb24").reformat(format="yuv420p")
    return out
