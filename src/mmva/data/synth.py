"""A generated MELD-format corpus in which every modality carries the label on its own.

``make_corpus(out_dir)`` writes ``{split}_sent_emo.csv`` and real H.264/AAC MP4 clips
(``train_splits/``, ``dev_splits_complete/``, ``output_repeated_splits_test/``) with PyAV:

- text: a sentence that names the feeling ("I feel so happy about the trip"), from a per-class
  word list, with neutral fillers so the words alone are not a lookup table;
- voice: espeak-ng speaks a *label-free* sentence (so audio cannot lean on the words) with a pitch,
  rate and loudness per class;
- face: a real photo (``skimage.data.astronaut()``) cropped to the face and transformed per class
  (brightness, hue, flip, rotation, zoom, motion) plus random jitter.

So a test can show each single modality beats chance and their fusion beats each of them.
The helpers :func:`write_mp4`, :func:`speak` and :func:`face_photo` are reused by the tests.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np

from mmva.labels import EMOTIONS, sentiment_of_emotion

SPLIT_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


# --------------------------------------------------------------------------------------------
# building blocks (also used by tests/media.py)


def write_mp4(path: str | os.PathLike, frames: np.ndarray | Sequence[np.ndarray] | None, fps: float = 10.0,
              audio: np.ndarray | None = None, sample_rate: int = 16000, *,
              frame_times: Sequence[float] | None = None, crf: int = 28) -> Path:
    """Write an H.264/AAC MP4 with PyAV from RGB uint8 frames and/or float32 mono audio.

    ``frame_times`` (seconds, increasing) gives each frame its own timestamp: a variable frame rate.
    Either stream may be omitted (``frames=None``: audio-only; ``audio=None``: silent video).

    >>> write_mp4("clip.mp4", np.zeros((10, 64, 64, 3), np.uint8), fps=10,
    ...           audio=np.zeros(16000, np.float32))   # doctest: +SKIP
    PosixPath('clip.mp4')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_video = frames is not None and len(frames) > 0
    with av.open(str(path), "w", format="mp4") as out:
        vs = as_ = None
        if has_video:
            h, w = frames[0].shape[:2]
            vs = out.add_stream("libx264", rate=int(round(fps)) if frame_times is None else 1000)
            vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            vs.options = {"crf": str(crf), "preset": "veryfast", "bf": "0"}  # no B-frames: pts == dts
            if frame_times is not None:  # millisecond timestamps carry the variable frame rate
                vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            as_ = out.add_stream("aac", rate=sample_rate, layout="mono")
        if vs is not None:
            for i, frame in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: vs.height, : vs.width]), format="rgb24")
                if frame_times is not None:
                    vf.pts = int(round(frame_times[i] * 1000))
                    vf.time_base = vs.codec_context.time_base
                else:
                    vf.pts = i
                for packet in vs.encode(vf):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
        if as_ is not None:
            pcm = np.clip(np.asarray(audio, np.float32), -1.0, 1.0).reshape(1, -1)
            chunk = 1024  # AAC frame size
            for i in range(0, pcm.shape[1], chunk):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i:i + chunk]), format="flt", layout="mono")
                af.sample_rate, af.pts = sample_rate, i
                for packet in as_.encode(af):
                    out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path


def _decode_wav(wav: bytes, sample_rate: int) -> np.ndarray:
    with av.open(io.BytesIO(wav)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
        chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def speak(text: str, *, pitch: int = 50, speed: int = 175, amplitude: int = 100, voice: str = "en-us",
          sample_rate: int = 16000) -> np.ndarray:
    """Speech for `text` from espeak-ng as float32 mono at `sample_rate`.

    ``pitch`` 0-99, ``speed`` words per minute, ``amplitude`` 0-200 (espeak-ng's -p, -s, -a).

    >>> speak("hello there", pitch=70).dtype   # doctest: +SKIP
    dtype('float32')
    """
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    proc = subprocess.run([exe, "--stdout", "-v", voice, "-p", str(pitch), "-s", str(speed), "-a", str(amplitude),
                           text], capture_output=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for {text!r}: {proc.stderr.decode(errors='replace').strip()}")
    return _decode_wav(proc.stdout, sample_rate)


@lru_cache(maxsize=1)
def _astronaut() -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - scikit-image is in the test extra
        raise ImportError("make-corpus needs scikit-image for its face photo: pip install scikit-image") from exc
    return data.astronaut()


def face_photo(size: int = 96, *, zoom: float = 1.0) -> np.ndarray:
    """A real face (Eileen Collins, ``skimage.data.astronaut()``) cropped square, RGB uint8.

    ``zoom`` > 1 crops tighter around the face, < 1 shows more of the shoulders.

    >>> face_photo(64).shape   # doctest: +SKIP
    (64, 64, 3)
    """
    img = _astronaut()  # 512x512; the face is roughly rows 20-220, cols 140-320
    cy, cx, half = 120, 230, int(round(130 / zoom))
    y0, y1 = max(0, cy - half), min(img.shape[0], cy + half)
    x0, x1 = max(0, cx - half), min(img.shape[1], cx + half)
    crop = img[y0:y1, x0:x1]
    return _resize(crop, size, size)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
