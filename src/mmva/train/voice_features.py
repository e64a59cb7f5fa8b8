"""Feature tables for the voice head: one row per clip of a speech manifest, cached and resumable.

Kinds (each its own ``{kind}.npz`` in the work folder, written in chunks so a stopped run resumes):

- ``whisper``: mean + std of Whisper tiny.en encoder states (:mod:`mmva.encoders.whisper_states`),
  the feature `mmva analyze` computes for every utterance; the frame states are kept too
  (``whisper_frames.npy``, float16) for pooling heads that learn their own weights over frames.
- ``whisper-base``: the same with Whisper base (multilingual), when its folder is given.
- ``whisper-b12`` (any block digits, ``whisper-b2``...): Whisper tiny.en's middle blocks
  (:class:`mmva.encoders.whisper_states.WhisperBlockStates`), each block pooled to mean + std and the
  blocks averaged: the shipped head's feature since issue 13.
- ``prosody``: the librosa prosody functionals of :mod:`mmva.encoders.prosody`.
- ``acoustic``: :func:`mmva.encoders.acoustic.acoustic_features` (MFCC, YIN pitch, energy, spectrum).
- ``mfcc``: 40 MFCC means and standard deviations + RMS (the simple baseline of BASELINES.md).

>>> # table = extract("speech.csv", "runs/voice-feats", kinds=("whisper",))
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmva.io import storage

log = logging.getLogger("mmva")
SAMPLE_RATE = 16000
CHUNK = 256


def load_audio(path: str) -> np.ndarray:
    """A clip as 16 kHz mono float32, through the same PyAV decoder `mmva analyze` uses."""
    from mmva.io.media import read_audio

    return np.asarray(read_audio(path, sample_rate=SAMPLE_RATE), dtype=np.float32).reshape(-1)


def _mfcc(y: np.ndarray) -> np.ndarray:
    import librosa

    m = librosa.feature.mfcc(y=y, sr=SAMPLE_RATE, n_mfcc=40)
    rms = librosa.feature.rms(y=y)[0]
    return np.concatenate([m.mean(1), m.std(1), [rms.mean(), rms.std()]]).astype(np.float32)


def _acoustic(y: np.ndarray) -> np.ndarray:
    from mmva.encoders.acoustic import acoustic_features

    return acoustic_features(y, SAMPLE_RATE)


def _prosody(y: np.ndarray) -> np.ndarray:
    from mmva.encoders.prosody import FEATURE_DIM, prosody_features

    v = prosody_features(y, SAMPLE_RATE)
    return np.full(FEATURE_DIM, np.nan, np.float32) if v is None else v


def extract(manifest: str, work: str, kinds: Sequence[str] = ("whisper",), *,
            whisper_base: str | None = None, progress: Callable[[str, int, int], None] | None = None
            ) -> dict[str, np.ndarray]:
    """Compute (or resume) every kind for every row of ``manifest``; returns ``{kind: (n, d)}``."""
    from mmva.train.crossval import read_rows

    rows = read_rows(manifest)
    paths = [r["path"] for r in rows]
    folder = Path(work)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for kind in kinds:
        out[kind] = _extract_kind(kind, paths, folder, whisper_base=whisper_base, progress=progress)
    return out


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a handle: np.savez would append ".npz" to a temp name
            np.savez(fh, **arrays)

    storage.write_atomic(str(path), write, fsync=False)


def block_kind(kind: str) -> tuple[int, ...]:
    """``"whisper-b12"`` -> ``(1, 2)``; ``()`` for any other kind."""
    m = re.fullmatch(r"whisper-b(\d+)", kind)
    return tuple(int(c) for c in m.group(1)) if m else ()


def blocks_kind(blocks: Sequence[int]) -> str:
    """``(1, 2)`` -> ``"whisper-b12"``: the cache name of a middle-block feature (see :func:`block_kind`)."""
    return "whisper-b" + "".join(str(b) for b in blocks)


def _extract_kind(kind: str, paths: list[str], folder: Path, *, whisper_base: str | None,
                  progress: Callable[[str, int, int], None] | None) -> np.ndarray:
    final = folder / f"{kind}.npz"
    if final.exists():
        data = np.load(final, allow_pickle=False)
        if list(data["paths"]) == paths:
            return data["x"]
        log.warning("%s: made for another manifest, recomputing", final)
    encoder: Any = None
    blocks = block_kind(kind)
    if blocks:
        from mmva.encoders.whisper_states import WhisperBlockStates

        encoder = WhisperBlockStates(None, blocks)
    elif kind in ("whisper", "whisper-base"):
        from mmva.encoders.whisper_states import WhisperStates

        if kind == "whisper-base" and not whisper_base:
            raise ValueError("whisper-base needs the folder of a CTranslate2 Whisper base model")
        encoder = WhisperStates(whisper_base if kind == "whisper-base" else None)
    chunks_dir = folder / f"{kind}.chunks"
    chunks_dir.mkdir(exist_ok=True)
    parts: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    t0 = time.time()
    for c, start in enumerate(range(0, len(paths), CHUNK)):
        chunk_file = chunks_dir / f"{c:05d}.npz"
        batch = paths[start: start + CHUNK]
        if chunk_file.exists():
            z = np.load(chunk_file, allow_pickle=False)
            parts.append(z["x"])
            if "frames" in z:
                frames.extend(np.split(z["frames"], np.cumsum(z["lengths"])[:-1]))
            continue
        audios = [load_audio(p) for p in batch]
        extra: dict[str, np.ndarray] = {}
        if blocks:
            x = encoder.pooled_batch(audios)
        elif encoder is not None:
            states = encoder.states_batch(audios)
            x = np.stack([encoder.pool(s) for s in states])
            if kind == "whisper":
                extra = {"frames": np.concatenate(states).astype(np.float16),
                         "lengths": np.array([len(s) for s in states])}
                frames.extend(s.astype(np.float16) for s in states)
        elif kind == "prosody":
            x = np.stack([_prosody(a) for a in audios])
        elif kind == "mfcc":
            x = np.stack([_mfcc(a) for a in audios])
        elif kind == "acoustic":
            x = np.stack([_acoustic(a) for a in audios])
        else:
            raise ValueError(f"unknown feature kind {kind!r}")
        _save_npz(chunk_file, x=x, **extra)
        parts.append(x)
        if progress:
            progress(kind, min(start + CHUNK, len(paths)), len(paths))
        log.info("%s: %d/%d clips, %.0f s", kind, min(start + CHUNK, len(paths)), len(paths), time.time() - t0)
    x = np.concatenate(parts).astype(np.float32)
    _save_npz(final, x=x, paths=np.array(paths))
    if frames:
        lengths = np.array([len(f) for f in frames])
        np.save(folder / f"{kind}_frames.npy", np.concatenate(frames))
        np.save(folder / f"{kind}_lengths.npy", lengths)
    (folder / f"{kind}.json").write_text(json.dumps({"rows": len(paths), "dim": int(x.shape[1]),
                                                     "seconds": round(time.time() - t0, 1)}))
    return x
