"""A short talking video made on the spot (no network): espeak-ng speech and a real face photo.

``mmva analyze --sample`` analyses it, so the README's first command works on a fresh install.
The only face at hand smiles (``skimage.data.astronaut()``), so the video cuts away to a plain
"slide" while the sad, angry and scared lines are spoken, as talks and interviews do: those
utterances are read from words and voice, and the output shows the face modality absent there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (sentence, espeak-ng pitch, words per minute, face on screen): one feeling per sentence
SAMPLE_SCRIPT: tuple[tuple[str, int, int, bool], ...] = (
    ("I am so happy to see you again, this is wonderful news!", 70, 185, True),
    ("I cannot believe you lied to me, I am really angry about it.", 35, 200, False),
    ("Oh no, something is wrong, I am scared.", 80, 210, False),
    ("I miss her so much, I feel sad and lonely today.", 25, 140, False),
    ("Thank you, that made my day!", 65, 180, True),
)


def _face_frames(n: int, size: int, fps: float, start: int) -> np.ndarray:
    """The face photo with a slow sway, so consecutive frames differ like real video."""
    from mmva.data.synth import face_photo

    base = face_photo(size + size // 4)
    out = np.empty((n, size, size, 3), np.uint8)
    margin = size // 8
    for k in range(n):
        i = start + k
        dx = int(round(margin * np.sin(2 * np.pi * i / (fps * 4))))
        dy = int(round(margin / 2 * np.sin(2 * np.pi * i / (fps * 6))))
        y, x = margin + dy, margin + dx
        out[k] = base[y:y + size, x:x + size]
    return out


def _slide_frames(n: int, size: int, shade: int) -> np.ndarray:
    """A plain slide (gradient and bars, no face) for the cutaways."""
    ramp = np.linspace(30, 90, size, dtype=np.float32)
    rows, cols = np.broadcast_arrays(ramp[:, None], ramp[None, :])
    img = np.stack([rows + shade, np.full((size, size), 60.0 + shade), cols + 40], -1)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for j in range(3):  # a few "bullet points"
        y = size // 4 + j * size // 5
        img[y:y + size // 20, size // 6: size - size // 4 - j * size // 10] = 220
    return np.repeat(img[None], n, axis=0)


def make_sample_video(path: str | Path, *, size: int = 256, fps: float = 15.0, pause: float = 1.0,
                      script: tuple[tuple[str, int, int, bool], ...] = SAMPLE_SCRIPT) -> Path:
    """Write an MP4 of ``script`` spoken by espeak-ng, sentences ``pause`` seconds apart.

    >>> make_sample_video("/tmp/mmva-sample.mp4")   # doctest: +SKIP
    PosixPath('/tmp/mmva-sample.mp4')
    """
    from mmva.data.synth import speak, write_mp4

    rate = 16000
    lead = np.zeros(int(0.5 * rate), np.float32)
    audio_parts, frame_parts, done = [lead], [_face_frames(int(0.5 * fps), size, fps, 0)], int(0.5 * fps)
    for k, (text, pitch, speed, face) in enumerate(script):
        voice = speak(text, pitch=pitch, speed=speed, sample_rate=rate)
        audio_parts += [voice, np.zeros(int(pause * rate), np.float32)]
        end = int(round(sum(len(a) for a in audio_parts) / rate * fps))
        n = end - done
        frame_parts.append(_face_frames(n, size, fps, done) if face else _slide_frames(n, size, 10 * k))
        done = end
    return write_mp4(path, np.concatenate(frame_parts), fps=fps, audio=np.concatenate(audio_parts),
                     sample_rate=rate)
