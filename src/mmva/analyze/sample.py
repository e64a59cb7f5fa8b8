"""A short talking video made on the spot (no network): espeak-ng speech and a real face photo.

``mmva analyze --sample`` analyses it, so the README's first command works on a fresh install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (sentence, espeak-ng pitch, words per minute): one feeling per sentence, voiced to match
SAMPLE_SCRIPT: tuple[tuple[str, int, int], ...] = (
    ("I am so happy to see you again, this is wonderful news!", 70, 185),
    ("I cannot believe you lied to me, I am really angry about it.", 35, 200),
    ("Oh no, something is wrong, I am scared.", 80, 210),
    ("I miss her so much, I feel sad and lonely today.", 25, 140),
)


def _frames(n: int, size: int, fps: float) -> np.ndarray:
    """The face photo with a slow sway and zoom, so consecutive frames differ like real video."""
    from mmva.data.synth import face_photo

    base = face_photo(size + size // 4)
    out = np.empty((n, size, size, 3), np.uint8)
    margin = size // 8
    for i in range(n):
        dx = int(round(margin * np.sin(2 * np.pi * i / (fps * 4))))
        dy = int(round(margin / 2 * np.sin(2 * np.pi * i / (fps * 6))))
        y, x = margin + dy, margin + dx
        out[i] = base[y:y + size, x:x + size]
    return out


def make_sample_video(path: str | Path, *, size: int = 256, fps: float = 15.0, pause: float = 1.0,
                      script: tuple[tuple[str, int, int], ...] = SAMPLE_SCRIPT) -> Path:
    """Write an MP4 of a face speaking ``script`` (sentences separated by ``pause`` seconds).

    >>> make_sample_video("/tmp/mmva-sample.mp4")   # doctest: +SKIP
    PosixPath('/tmp/mmva-sample.mp4')
    """
    from mmva.data.synth import speak, write_mp4

    rate = 16000
    parts = [np.zeros(int(0.5 * rate), np.float32)]
    for text, pitch, speed in script:
        parts += [speak(text, pitch=pitch, speed=speed, sample_rate=rate), np.zeros(int(pause * rate), np.float32)]
    audio = np.concatenate(parts)
    n = int(np.ceil(len(audio) / rate * fps))
    return write_mp4(path, _frames(n, size, fps), fps=fps, audio=audio, sample_rate=rate)
