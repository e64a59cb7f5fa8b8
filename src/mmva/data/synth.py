"""A generated MELD-format corpus in which every modality carries the label on its own.

``make_corpus(out_dir)`` writes ``{split}_sent_emo.csv`` and real H.264/AAC MP4 clips
(``train_splits/``, ``dev_splits_complete/``, ``output_repeated_splits_test/``) with PyAV:

- text: a short sentence with a word that names the feeling ("I feel so furious.");
- voice: espeak-ng speaks that sentence with a pitch, rate, loudness and voice variant per class
  (so speech recognition still gets the words, and prosody carries its own cue);
- face: a real photo (``skimage.data.astronaut()``) cropped to the face and transformed per class
  (tint, brightness, zoom, mirroring, movement) plus random jitter.

In each class about ``1 - agreement`` of the clips show another class's cue in exactly one
modality (recorded in the ``TextCue``/``VoiceCue``/``FaceCue`` columns), so each single modality
beats chance without being perfect, and fusion can outvote the odd one out.
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

from mmva.data.meld import CLIP_FOLDERS as SPLIT_FOLDERS
from mmva.labels import EMOTIONS, sentiment_of_emotion


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


# Four espeak-ng voices that differ in voice variant, pitch and rate: the speakers of generated
# conversations (diarization tests and benchmarks).
CONVERSATION_VOICES: tuple[dict, ...] = (
    {"voice": "en-us+m3", "pitch": 40, "speed": 160},
    {"voice": "en-gb+f2", "pitch": 70, "speed": 180},
    {"voice": "en-us+m7", "pitch": 25, "speed": 140},
    {"voice": "en-gb-x-rp+f4", "pitch": 60, "speed": 200},
)


def conversation(turns: Sequence[tuple[int, str]], *, voices: Sequence[dict] = CONVERSATION_VOICES,
                 pauses: tuple[float, float] = (0.3, 0.9), seed: int = 0,
                 sample_rate: int = 16000) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """Speakers taking turns: ``turns`` are (speaker index into ``voices``, text), spoken one after
    the other with a random pause from ``pauses`` (seconds) between them.

    Returns the audio and the reference turns ``(start, end, speaker)``: the span of each turn's
    speech, espeak-ng's own leading and trailing silence excluded.

    >>> audio, ref = conversation([(0, "Hello there."), (1, "Hi, how are you?")])   # doctest: +SKIP
    >>> [(round(s, 1), round(e, 1), k) for s, e, k in ref]                            # doctest: +SKIP
    [(0.0, 0.8, 0), (1.3, 2.4, 1)]
    """
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    ref: list[tuple[float, float, int]] = []
    t = 0
    for i, (who, text) in enumerate(turns):
        if not 0 <= who < len(voices):
            raise ValueError(f"turn {i}: speaker {who} has no voice (0..{len(voices) - 1})")
        clip = speak(text, sample_rate=sample_rate, **voices[who])
        loud = np.flatnonzero(np.abs(clip) > 0.02 * max(1e-6, float(np.abs(clip).max())))
        clip = clip[loud[0]:loud[-1] + 1] if len(loud) else clip
        if i:
            gap = np.zeros(int(rng.uniform(*pauses) * sample_rate), np.float32)
            parts.append(gap)
            t += len(gap)
        ref.append((t / sample_rate, (t + len(clip)) / sample_rate, who))
        parts.append(clip)
        t += len(clip)
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), ref


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


# --------------------------------------------------------------------------------------------
# the per-class cues

# Words that name each feeling (text cue).
WORDS: dict[str, tuple[str, ...]] = {
    "anger": ("angry", "furious"),
    "disgust": ("disgusted", "revolted"),
    "fear": ("scared", "afraid"),
    "joy": ("happy", "delighted"),
    "neutral": ("okay", "fine"),
    "sadness": ("sad", "miserable"),
    "surprise": ("surprised", "amazed"),
}
TEMPLATES = ("I feel so {w}.", "Honestly I am {w}.", "That makes me {w}.", "I am {w} right now.",
             "Wow, {w} today.", "Well, I am {w}.")
# espeak-ng pitch (0-99), speed (words/min), amplitude (0-200) per class (voice cue).
VOICES: dict[str, tuple[int, int, int]] = {
    "anger": (30, 240, 190), "disgust": (15, 120, 120), "fear": (92, 260, 70), "joy": (75, 200, 160),
    "neutral": (50, 165, 100), "sadness": (22, 100, 60), "surprise": (99, 175, 180),
}
# espeak-ng voice variant per class: a timbre on top of the prosody, as different as two speakers.
VARIANTS: dict[str, str] = {"anger": "m3", "disgust": "croak", "fear": "whisperf", "joy": "f3", "neutral": "m1",
                            "sadness": "m7", "surprise": "f5"}
SPEAKERS = ("Alex", "Sam", "Robin", "Kim", "Jo")


def face_for(emotion: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The face photo transformed the way `emotion` looks in this corpus (face cue), with jitter."""
    zoom = {"fear": 0.75, "surprise": 1.35, "disgust": 1.15}.get(emotion, 1.0) * rng.uniform(0.95, 1.05)
    img = face_photo(size, zoom=zoom).astype(np.float32)
    if emotion == "anger":
        img[..., 0] = img[..., 0] * 1.35 + 30  # red
    elif emotion == "disgust":
        img[..., 1] = img[..., 1] * 1.3 + 25  # green
    elif emotion == "fear":
        img *= 0.55  # dark
    elif emotion == "joy":
        img = img * 1.25 + 35  # bright
    elif emotion == "sadness":
        grey = img.mean(axis=-1, keepdims=True)
        img = np.concatenate([grey * 0.8, grey * 0.85, grey * 1.1 + 20], axis=-1)  # grey-blue
    elif emotion == "surprise":
        img = img[:, ::-1]  # mirrored
    img = img * rng.uniform(0.92, 1.08) + rng.uniform(-8, 8)
    return np.clip(img, 0, 255).astype(np.uint8)


def motion(emotion: str, face: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Frames with a per-class movement: shaking (anger), drooping (sadness), bouncing (joy)..."""
    out = []
    for i in range(n):
        phase = i / max(n - 1, 1)
        dy, dx = {
            "anger": (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))),
            "joy": (int(round(4 * abs(np.sin(phase * 3 * np.pi)))) * -1, 0),
            "sadness": (int(round(6 * phase)), 0),
            "fear": (0, int(round(2 * np.sin(phase * 12 * np.pi)))),
            "surprise": (int(round(-5 * phase)), 0),
        }.get(emotion, (0, 0))
        out.append(np.roll(face, (dy, dx), axis=(0, 1)))
    return np.stack(out)


def _off_cue(label: str, rng: np.random.Generator) -> str:
    others = [e for e in EMOTIONS if e != label]
    return others[int(rng.integers(len(others)))]


@dataclass(frozen=True)
class _Item:
    dia: int
    utt: int
    emotion: str
    text_cue: str
    voice_cue: str
    face_cue: str


def _plan(split: str, n_per_class: int, agreement: float, rng: np.random.Generator) -> list[_Item]:
    """Clips in dialogues of 2-4 turns; in each class, round((1 - agreement) * n) clips per modality
    show another class's cue, never two modalities of one clip (so the other two outvote it)."""
    off = min(int(round((1 - agreement) * n_per_class)), n_per_class // 3)
    cues: list[tuple[str, str, str, str]] = []
    for label in EMOTIONS:
        wrong = [None] * n_per_class  # which modality (0 text, 1 voice, 2 face) is off for each clip
        slots = rng.permutation(n_per_class)
        for m in range(3):
            for i in slots[m * off:(m + 1) * off]:
                wrong[i] = m
        for i in range(n_per_class):
            c = [label if wrong[i] != m else _off_cue(label, rng) for m in range(3)]
            cues.append((label, c[0], c[1], c[2]))
    order = rng.permutation(len(cues))
    items, dia, utt = [], 0, 0
    turns = int(rng.integers(2, 5))
    for k in order:
        items.append(_Item(dia, utt, *cues[k]))
        utt += 1
        if utt >= turns:
            dia, utt, turns = dia + 1, 0, int(rng.integers(2, 5))
    return items


def _make_clip(item: _Item, path: Path, size: int, fps: float, rng: np.random.Generator) -> tuple[str, float]:
    words = WORDS[item.text_cue]
    text = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(w=words[int(rng.integers(len(words)))])
    pitch, speed, amp = VOICES[item.voice_cue]
    audio = speak(text, pitch=int(np.clip(pitch + rng.integers(-4, 5), 0, 99)),
                  speed=int(speed + rng.integers(-10, 11)), amplitude=amp, voice=f"en-us+{VARIANTS[item.voice_cue]}")
    audio = np.concatenate([np.zeros(1600, np.float32), audio, np.zeros(1600, np.float32)])  # 0.1 s pads
    seconds = len(audio) / 16000
    face = face_for(item.face_cue, size, rng)
    write_mp4(path, motion(item.face_cue, face, max(2, int(np.ceil(seconds * fps))), rng), fps=fps, audio=audio)
    return text, seconds


def _timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def make_corpus(out_dir: str | os.PathLike, n_per_class: int | dict[str, int] = 8, seed: int = 0,
                splits: Iterable[str] = ("train", "dev"), *, size: int = 64, fps: float = 8.0,
                agreement: float = 0.75) -> Path:
    """Write a MELD-format corpus whose text, voice and face each carry the label on their own.

    In each class, about ``1 - agreement`` of the clips show another class's cue in one modality
    (never in two), so any one modality is right about `agreement` of the time and the other two
    modalities outvote the wrong one: fusion can beat every single modality.
    The per-clip cues are in the extra CSV columns ``TextCue``, ``VoiceCue`` and ``FaceCue``.

    >>> make_corpus("toy", n_per_class=4)   # doctest: +SKIP
    PosixPath('toy')
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
              "Episode", "StartTime", "EndTime", "TextCue", "VoiceCue", "FaceCue"]
    for split in splits:
        n = n_per_class.get(split, 0) if isinstance(n_per_class, dict) else n_per_class
        folder = out / SPLIT_FOLDERS.get(split, split)
        folder.mkdir(parents=True, exist_ok=True)
        rows, clock = [], 0.0
        for k, item in enumerate(_plan(split, n, agreement, rng), start=1):
            text, seconds = _make_clip(item, folder / f"dia{item.dia}_utt{item.utt}.mp4", size, fps, rng)
            rows.append([k, text, SPEAKERS[(item.dia + item.utt) % len(SPEAKERS)], item.emotion,
                         sentiment_of_emotion(item.emotion), item.dia, item.utt, 1, 1, _timestamp(clock),
                         _timestamp(clock + seconds), item.text_cue, item.voice_cue, item.face_cue])
            clock += seconds + 0.5
        with open(out / f"{split}_sent_emo.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    return out
